"""The one registry of the evaluations (torch-free): each evaluation's name, command, the models it evaluates, the
inputs its command reads, the fields its metrics file must have and who reads it. The CLI (``lsgm evaluate``), the
plan (``lsgm.plan``: which evaluations a run may have, their settings, the controls), the report (``lsgm report``:
which metrics files a table reads and what they must hold) and the workflow's rules read it from here.

An evaluation's settings are its command's, declared once in :mod:`lsgm.eval.settings` (type, default, range, help).
Adding a setting: declare it there and give the command's ``evaluate_*`` function that keyword; the CLI forwards
every declared setting, the plan checks and passes it. Adding an evaluation: an entry here (and its function).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Evaluation:
    """One evaluation. ``name`` is the metrics file's stem and its record's ``kind``."""

    name: str
    command: str  # `lsgm evaluate <command>`; its settings: lsgm.eval.settings.SETTINGS[command]
    help: str
    function: str  # "module:function", called as function(model, **inputs, **settings, use_ema=, device=)
    kinds: tuple[str, ...]  # the model kinds it evaluates
    inputs: tuple[str, ...] = ()  # command-line inputs beyond --model: stats, classifier, inception_weights, root, out
    fields: tuple[str, ...] = ()  # keys its metrics record holds beyond every record's (dotted)
    fixed: dict = field(default_factory=dict)  # settings it fixes: a control is its command with these
    control_of: str | None = None  # a control: added to every trained LSGM that has this evaluation
    read_by: tuple[str, ...] = ()  # what reads its metrics files: "tables", "figure4"
    first_seed_only: bool = False  # planned for a scale's first seed only (the cost of sampling, Figure 4)
    in_recipes: bool = True  # may be listed in config.yaml's recipes.*.evals

    def call(self, model: str, inputs: dict, settings: dict, use_ema: bool, device: str | None) -> dict:
        """Run it: the command's function with every input and setting as keywords; returns the metrics record."""
        module, name = self.function.split(":")
        fn = getattr(importlib.import_module(module), name)
        return fn(model, **inputs, **{**settings, **self.fixed}, use_ema=use_ema, device=device)


_STATS = ("stats", "classifier", "inception_weights")
EVALUATIONS: dict[str, Evaluation] = {e.name: e for e in (
    Evaluation("nll", "nll", "NELBO split into named terms and the importance-weighted NLL", "lsgm.eval.nll:evaluate_nll",
               kinds=("vae", "lsgm"), inputs=("root",), read_by=("tables",)),
    Evaluation("fid", "fid", "FID (Inception) or FD (classifier features) of generated samples",
               "lsgm.eval.fid:evaluate_fid", kinds=("vae", "lsgm", "sgm"), inputs=_STATS, fields=("settings",),
               read_by=("tables",)),
    Evaluation("fid_normal", "fid", "the sample-quality control: an LSGM's decoder with its score prior replaced by "
               "the Normal its mixed score is at initialisation", "lsgm.eval.fid:evaluate_fid", kinds=("lsgm",),
               inputs=_STATS, fields=("settings",), fixed={"latent": "matched_normal"}, control_of="fid",
               read_by=("tables",), in_recipes=False),
    Evaluation("cost", "cost", "NFE, seconds per batch and FD per tolerance / PC step count",
               "lsgm.eval.cost:evaluate_cost", kinds=("lsgm", "sgm"), inputs=_STATS, fields=("metrics.rows",),
               read_by=("figure4",), first_seed_only=True),
    Evaluation("samples", "samples", "a PNG grid of samples (decoder means) and its sidecar JSON",
               "lsgm.eval.samples:evaluate_samples", kinds=("vae", "lsgm", "sgm"), inputs=("out",), in_recipes=False),
)}

# the evaluations a recipe may list (config.yaml recipes.*.evals), the controls, and what each reader takes
RECIPE_EVALS = tuple(n for n, e in EVALUATIONS.items() if e.in_recipes)
CONTROL_EVALS = {n: (e.command, e.fixed) for n, e in EVALUATIONS.items() if e.control_of}
COMMANDS = tuple(dict.fromkeys(e.command for e in EVALUATIONS.values()))


def read_by(reader: str) -> tuple[str, ...]:
    """The evaluations whose metrics files ``reader`` (``tables``, ``figure4``) reads."""
    return tuple(n for n, e in EVALUATIONS.items() if reader in e.read_by)


def of_command(command: str) -> Evaluation:
    """The plain evaluation of a command (not a control): what ``lsgm evaluate <command>`` runs."""
    return next(e for e in EVALUATIONS.values() if e.command == command and not e.control_of)
