"""Config layers you can see: every value the plan resolves is the merge of an ordered list of named layers, the last
that sets a key winning, and every layer that set a key is kept, so ``lsgm plan --why RUN KEY`` names where a value
came from (pure Python, no torch).

A trained model's run config (``Run.layers["config"]``), in this order:

1. ``official recipe NAME`` -- the NVlabs/LSGM command translated by lsgm/recipes (a pixel SGM: score_sde's config);
2. ``recipes.KIND.NAME.config``;
3. ``scales.S.defaults.KIND.config``;
4. ``scales.S.runs.KIND.NAME.config`` (a Table 6 cell: ``scales.S.table6.config``);
5. what the run is (a Table 6 cell's SDE and objective; a control's sections from its LSGM and backbone);
6. ``the plan`` -- kind, name, seed, the dataset and its folder and sizes, deviations, epochs as steps;
7. ``scales.S.shrink...`` -- a miniature's size-only overlay;
8. ``the scaling rules`` (lsgm/plan/scaling.py) -- EMA horizon and warm-up at a shrunken scale;
9. ``the backbone`` -- an LSGM's ``vae`` section, its stage-1 run's.

An evaluation's settings (``Run.layers["eval"]``, keys ``METRIC.KEY``): ``scales.S.eval`` < ``scales.S.defaults.KIND.eval``
< the official evaluation command < ``scales.S.runs.KIND.NAME.eval`` (Table 6: ``scales.S.table6.eval``) < the
miniature's ``shrink`` < a control's fixed settings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lsgm.plan.common import deep_merge, flat_keys

MISSING = object()


@dataclass
class Layers:
    """An ordered list of ``(name, values)`` merged later-wins (:func:`deep_merge`)."""

    entries: list[tuple[str, dict]] = field(default_factory=list)

    def add(self, name: str, values: dict | None) -> None:
        """Append a layer (an empty one is left out: it sets nothing)."""
        if values:
            self.entries.append((name, copy.deepcopy(values)))

    def add_changes(self, name: str, before: dict, after: dict) -> None:
        """Append as one layer what changed from ``before`` to ``after`` (a step that edits the merged values)."""
        old, new = flat_keys(before), flat_keys(after)
        changed = {k: v for k, v in new.items() if k not in old or old[k] != v}
        self.add(name, unflatten(changed))

    def merged(self) -> dict:
        return deep_merge({}, *(values for _, values in self.entries))

    def sources(self, key: str) -> list[tuple[str, object]]:
        """Every layer that sets the dotted ``key`` (or a key under it), in order, with its value there."""
        out = []
        for name, values in self.entries:
            value = lookup(values, key)
            if value is not MISSING:
                out.append((name, value))
        return out


def lookup(tree: dict, key: str):
    """The value at a dotted key of a nested mapping, or :data:`MISSING`."""
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def unflatten(flat: dict[str, object]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (the inverse of :func:`lsgm.plan.common.flat_keys`)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def why(run, key: str) -> str:
    """The layers that set ``key`` of ``run`` (``config`` keys, or ``eval.METRIC.KEY``), the winner marked; one line
    if no layer sets it."""
    section, _, rest = key.partition(".")
    layers = run.layers["eval"] if section == "eval" else run.layers["config"]
    key = rest if section == "eval" else key
    sources = layers.sources(key)
    title = f"{run.scale}/{run.stem}  {section + '.' + key if section == 'eval' else key}"
    if not sources:
        known = sorted({k.split(".")[0] for _, v in layers.entries for k in flat_keys(v)})
        return f"{title}: no layer sets it (the command's default applies); top-level keys: {', '.join(known)}"
    width = max(len(name) for name, _ in sources)
    lines = [title] + [f"  {name:<{width}}  {value!r}" for name, value in sources]
    lines[-1] += "   <- wins"
    return "\n".join(lines)
