"""Where a value of the workflow's config came from, and the one-line errors that say so.

The workflow's config is ``config.yaml``, then each ``--configfile`` overlay, then ``--config KEY=VALUE`` on the
command line (later wins; mappings merge key by key). Snakemake reads a nested ``--config`` value
(``scales={smoke: {eval: {fid: {n_samples: 32}}}}``) with YAML's BaseLoader, every scalar a string;
:meth:`ConfigSources.retype` reads them as YAML scalars, as a config file would. An error is labelled with the source
that set the offending value (``config.yaml``, the overlay's path, or ``--config (command line)``), and an unknown key
names the closest valid one. Torch-free; the workflow (``workflow/rules/common.smk``) is its one user.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lsgm.config import did_you_mean
from lsgm.plan import deep_merge, flat_keys

BASE = "config.yaml"
CLI = "--config (command line)"
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-3: a number, though YAML 1.1 wants 1.0e-3


def yaml_scalar(text: str) -> Any:
    """A command-line value read as a config file reads it: YAML (``32`` an int, ``true`` a bool, ``null`` None), and
    ``1e-3`` a number. A text that YAML reads as a mapping or list, or cannot read, stays text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)):
        return text
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    return value


def retyped(tree: Any) -> Any:
    """``tree`` with every string scalar read by :func:`yaml_scalar` (mappings and lists kept)."""
    if isinstance(tree, dict):
        return {key: retyped(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [retyped(value) for value in tree]
    return yaml_scalar(tree) if isinstance(tree, str) else tree


def _has(tree: Any, path: Sequence) -> bool:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _merge_into(config: dict, over: dict) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            _merge_into(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def _set_at(tree: dict, message: str) -> str | None:
    """The key of ``tree`` that a value error ``message`` is about: the longest whose last two parts (``sde.beta_max``)
    appear in it, else one whose last part appears quoted (an unknown key: ``['ema_decy']``)."""
    keys = sorted(flat_keys(tree), key=len, reverse=True)
    for key in keys:
        tail = ".".join(key.split(".")[-2:])
        if re.search(rf"(?<![\w]){re.escape(tail)}(?![\w])", message):
            return key
    return next((key for key in keys if f"'{key.split('.')[-1]}'" in message), None)


@dataclass
class ConfigSources:
    """The layers of the workflow's config, lowest precedence first: ``(label, tree)``."""

    layers: list[tuple[str, dict]]

    @classmethod
    def of_workflow(cls, base: Path, configfiles: Sequence[str | Path], cli: Any) -> ConfigSources:
        """config.yaml at ``base``, the ``--configfile`` overlays, the ``--config`` values (Snakemake's parsed dict)."""
        layers = [(BASE, _load(base))] + [(str(path), _load(path)) for path in configfiles]
        return cls(layers + [(CLI, retyped(dict(cli or {})))])

    def retype(self, config: dict) -> None:
        """Put the command line's values, read as YAML scalars, into the merged ``config`` (in place)."""
        label, tree = self.layers[-1]
        if label == CLI:
            _merge_into(config, tree)

    def source_of(self, path: Sequence) -> str:
        """The label of the last source that sets ``path`` (config.yaml when none does)."""
        return next((label for label, tree in reversed(self.layers) if _has(tree, path)), BASE)

    def schema_message(self, error: Any) -> str:
        """One line for a jsonschema ``ValidationError``: its source, the key path, the message, for an unknown key the
        closest valid one."""
        path, message, key = list(error.absolute_path), error.message, list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            extra = [k for k in error.instance if k not in allowed]
            key += extra[:1]
            hint = did_you_mean(extra, allowed)
            message += f";{hint}" if hint else ""
        where = ".".join(str(p) for p in path) or "<top level>"
        return f"{self.source_of(key)}: {where}: {message}"

    def blame(self, message: str, check: Callable[[dict], Any], errors: tuple[type[BaseException], ...]) -> str:
        """``message`` of an error that ``check`` (the schema, then every scale's plan) raised on the merged config,
        labelled with the first source whose merge makes ``check`` fail, and the key of it that set the value."""
        merged: dict = {}
        for label, tree in self.layers:
            merged = deep_merge(merged, tree)
            try:
                check(copy.deepcopy(merged))
            except errors:
                at = _set_at(tree, message) if label != BASE else None
                return f"{label}: {message}" + (f" (set at {at})" if at else "")
        return f"{self.layers[-1][0]}: {message}"


def _load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}
