"""The one home of the evaluation settings (torch-free).

Every setting of ``lsgm evaluate nll | fid | cost | samples`` and ``lsgm report variance`` is declared here once:
its type, default, allowed range or choices, and help. From the declarations

- the command lines are built (:func:`add_arguments`): an out-of-range value is an argparse error (one line,
  exit 2) before any model is loaded;
- ``config.yaml``'s ``scales.S.eval`` blocks and their overrides are validated by the plan (:func:`check_block`:
  an unknown key names the closest known one, a bad value names its range);
- the rules that tie settings together (:func:`check_combination`) run in both places.

The official evaluation commands (``lsgm.recipes.eval_settings``, score_sde's PC sampler) are a layer of values
over these defaults, resolved in ``lsgm.plan`` (``Plan._eval_settings``); the defaults are the official
``evaluate_vada.py`` ones (ODE tolerance and end time 1e-5, dopri5) and score_sde's PC corrector SNR 0.16.
"""

from __future__ import annotations

import argparse
import difflib
import math
from dataclasses import dataclass
from typing import Any

COMMANDS = ("nll", "fid", "cost", "samples", "variance")
# torchdiffeq's methods (fixed-grid ones included; the official evaluation uses the adaptive dopri5)
SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "rk4", "explicit_adams",
           "implicit_adams")


class SettingError(ValueError):
    """A bad evaluation setting (one line: where, the value, what is allowed)."""


@dataclass(frozen=True)
class Setting:
    """One evaluation setting: ``kind`` int | float | str, a ``default`` (None: unset, ``unset`` says what that
    means), the range ``[low, high]`` (``low_open``: ``(low, high]``) or ``choices``, ``many``: a list of values."""

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    many: bool = False
    unset: str | None = None  # what the default None means
    none_text: str | None = None  # the command-line word for None (``--n-batches all``)
    omit_unset: bool = False  # an opt-in measurement: a plan lists it only where a scale sets it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is None:
            return f"a {self.kind.__name__}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open or self.high == math.inf else "]"
        high = "inf" if self.high == math.inf else f"{self.high:g}"
        return f"a{'n' if self.kind is int else ''} {self.kind.__name__} in {left}{self.low:g}, {high}{right}"

    def check_one(self, value: Any) -> Any:
        """``value`` as this setting's type, or SettingError (the message says what is allowed)."""
        if isinstance(value, bool) or (self.kind is int and isinstance(value, float) and not value.is_integer()):
            raise SettingError(f"{value!r} is not {self.allowed()}")
        if self.kind in (int, float):
            if not isinstance(value, (int, float)):
                raise SettingError(f"{value!r} is not {self.allowed()}")
            value = self.kind(value)
            high_bad = value >= self.high if self.high_open else value > self.high
            if self.low is not None and (value <= self.low if self.low_open else value < self.low) or high_bad \
                    or not math.isfinite(value):
                raise SettingError(f"{value!r} is out of range; allowed: {self.allowed()}")
            return value
        if not isinstance(value, str) or (self.choices is not None and value not in self.choices):
            raise SettingError(f"{value!r} is not {self.allowed()}")
        return value

    def check(self, value: Any) -> Any:
        """A whole value (a list for ``many``); None: not passed, the command's default applies."""
        if value is None:
            return None
        if self.many:
            if not isinstance(value, (list, tuple)):
                raise SettingError(f"{value!r} is not a list of {self.allowed().removeprefix('a ')}")
            return [self.check_one(v) for v in value]
        return self.check_one(value)

    def argparse_type(self):
        """An argparse ``type`` that parses and range-checks one value (ArgumentTypeError: one line, exit 2)."""

        def parse(text: str):
            if self.none_text is not None and text == self.none_text:
                return None
            if self.kind is str:
                value = text
            else:
                try:
                    value = self.kind(text)
                except ValueError:
                    raise argparse.ArgumentTypeError(f"{text!r} is not {self.allowed()}") from None
            try:
                return self.check_one(value)
            except SettingError as err:
                raise argparse.ArgumentTypeError(str(err)) from None

        parse.__name__ = self.kind.__name__  # argparse names the type in its messages
        return parse


def _s(name, kind, default, help, **kw) -> Setting:
    return Setting(name, kind, default, help, **kw)


_SEED = _s("seed", int, 0, "evaluation seed (per-sample generators are seeded by (seed, sample index))", low=0)
_UNIT = {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True}  # ODE tolerances and end times: (0, 1)
_TOLERANCE = _s("tolerance", float, 1e-5, "ODE rtol = atol (official --ode_solver_tol 1e-5)", **_UNIT)
_SOLVER = _s("solver", str, "dopri5", "torchdiffeq method (official: an adaptive RK45)", choices=SOLVERS)
_GENERATION = (
    _SOLVER,
    _s("t_eps", float, 1e-5, "ODE end time (official --ode_eps 1e-5)", **_UNIT),
    _s("temperature", float, 1.0, "scale of the top latent's starting noise (official --temp)", low=0.0,
       low_open=True),
    _s("vae_temperature", float, 1.0, "scale of the decoder's lower-scale groups (official --vae_temp)", low=0.0,
       low_open=True),
    _s("bn_mode", str, "eval", "BatchNorm mode while sampling (official --vae_train_mode: train)",
       choices=("eval", "train")),
)
_LATENT = _s("latent", str, "prior", "LSGM: the top latent from its score prior ('prior'), or ('matched_normal') from "
             "N(0, tau^2 I), tau = (m(t_eps)/m(1))^alpha_0 per channel: the Normal its mixed score is at initialisation "
             "(the sample-quality control)", choices=("prior", "matched_normal"))
_SNR = _s("snr", float, 0.16, "PC corrector signal-to-noise ratio (score_sde)", low=0.0, low_open=True)
_ONE_SAMPLER = (
    _TOLERANCE,
    _s("sampler", str, "ode", "pixel SGM: 'pc' samples with predictor-corrector (the original SGM's FID protocol)",
       choices=("ode", "pc")),
    _s("pc_steps", int, None, "PC steps (with --sampler pc)", low=1, unset="none (ODE sampling)"),
    _SNR,
)

SETTINGS: dict[str, dict[str, Setting]] = {command: {} for command in COMMANDS}
for _command, _settings in {
    "nll": (
        _SEED,
        _s("prior", str, "ode", "LSGM prior term (VAE: its Normal prior)", choices=("ode", "dsm"),
           unset="ode for an LSGM, the Normal prior for a VAE"),
        _s("iw_samples", int, 1, "K importance samples", low=1),
        _s("inner", int, 1, "M ODE solves per encoder sample (mean, std. error)", low=1, unset="1"),
        _s("batch_size", int, 128, "test images per batch (one ODE system per batch)", low=1),
        _s("tolerance", float, 1e-5, "ODE rtol = atol", unset="1e-5", **_UNIT),
        _s("t_eps", float, None, "ODE end time / DSM lower time", unset="1e-5 (ode), the training t_eps (dsm)",
           **_UNIT),
        _s("probe", str, "gaussian", "Hutchinson probe", choices=("gaussian", "rademacher")),
        _SOLVER,
        _s("t_draws", int, 16, "time draws per encoder sample of the DSM prior term (--prior dsm, and nelbo_bound)",
           low=1),
        _s("n_batches", int, None, "test batches", low=1, unset="all", none_text="all"),
        _s("split", str, "test", "the split evaluated", choices=("test", "train")),
    ),
    "fid": (_SEED, *_GENERATION, *_ONE_SAMPLER, _LATENT,
            _s("batch_size", int, 64, "samples per batch (the ODE system's size)", low=1),
            _s("n_samples", int, 50_000, "samples (official 50,000)", low=2),
            _s("official_processes", int, None, "also the FID with the official covariance: the mean of the "
               "per-process statistics of this many consecutive sample shards (evaluate_vada.py averages its GPUs')",
               low=1, unset="not computed", omit_unset=True)),
    "cost": (_SEED, *_GENERATION, _SNR,
             _s("batch_size", int, 16, "samples per timed batch", low=1),
             _s("tolerances", float, [1e-5, 1e-4, 1e-3, 1e-2], "ODE tolerances (Figure 4's sweep)", many=True,
                **_UNIT),
             _s("n_batches", int, 20, "timed batches (after one warm-up batch)", low=1),
             _s("fd_samples", int, 1000, "samples for the FD at each setting (0: none)", low=0),
             _s("fd_batch_size", int, 100, "samples per batch of the FD", low=1),
             _s("pc_steps", int, None, "pixel SGM: PC step counts", low=1, many=True, unset="none"),
             _s("samplers", str, None, "pixel SGM: which samplers", choices=("ode", "pc"), many=True,
                unset="both")),
    "samples": (_SEED, *_GENERATION, *_ONE_SAMPLER, _LATENT,
                _s("n", int, 64, "samples in the grid", low=1),
                _s("nrow", int, 8, "samples per grid row", low=1),
                _s("batch_size", int, 64, "samples per batch", low=1)),
    "variance": (_SEED,
                 _s("n_latents", int, 16, "encoder latents per cell", low=2),
                 _s("n_draws", int, 64, "noise draws per (latent, t)", low=2),
                 _s("n_t_draws", int, 20000, "time draws of the closed form", low=2),
                 _s("batch_size", int, 1024, "denoising passes per batch", low=1)),
}.items():
    SETTINGS[_command] = {s.name: s for s in _settings}


def defaults(command: str) -> dict[str, Any]:
    """Every setting of ``command`` at its default."""
    return {name: s.default for name, s in SETTINGS[command].items()}


# What a model kind does not use: a VAE has no score prior (no ODE, no DSM term, no PC sampler); an LSGM samples
# with the ODE only.
_UNUSED = {"vae": {"prior", "inner", "tolerance", "tolerances", "t_eps", "probe", "solver", "t_draws", "sampler",
                   "pc_steps", "samplers", "snr", "latent"},
           "lsgm": {"sampler", "pc_steps", "samplers", "snr"}, "sgm": {"latent"}, "classifier": set()}


def applicable(command: str, kind: str) -> list[str]:
    """The settings of ``command`` that a ``kind`` model's evaluation uses (``lsgm plan`` shows these)."""
    return [name for name in SETTINGS[command] if name not in _UNUSED.get(kind, set())]


def closest(name: str, known) -> str:
    """'; did you mean X?' for a misspelled name, else ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_block(command: str, block: dict, where: str, combinations: bool = True) -> dict:
    """Validate one settings block (``config.yaml``'s ``scales.S.eval.<command>``, or a job's merged settings):
    every key known, every value of its type and range, and (``combinations``: a whole job's settings, not one layer
    of them) the combinations allowed. Returns the block with values of their declared type; raises SettingError
    naming ``where.key``."""
    if command not in SETTINGS:
        raise SettingError(f"{where}: unknown evaluation {command!r}{closest(command, SETTINGS)}; known: "
                           f"{', '.join(COMMANDS)}")
    known = SETTINGS[command]
    out = {}
    for key, value in block.items():
        if key not in known:
            raise SettingError(f"{where}.{key}: unknown setting of {command}{closest(key, known)} (known: "
                               f"{', '.join(sorted(known))})")
        try:
            out[key] = known[key].check(value)
        except SettingError as err:
            text = str(err)  # "<value> is out of range; ..." or, for one item of a list, "<item> ..."
            raise SettingError(f"{where}.{key} = {text}" if text.startswith(repr(value)) else
                               f"{where}.{key} = {value!r}: {text}") from None
    if combinations:
        check_combination(command, {**defaults(command), **{k: v for k, v in out.items() if v is not None}}, where)
    return out


def check_combination(command: str, settings: dict, where: str) -> None:
    """Rules across settings, on resolved settings (defaults filled in): SettingError naming the keys."""
    if command == "nll" and settings.get("prior") == "dsm" and settings.get("iw_samples", 1) > 1:
        raise SettingError(f"{where}: iw_samples = {settings['iw_samples']} with prior dsm: the DSM prior term's "
                           "time-draw noise sits inside the logsumexp and biases the NLL low; use iw_samples 1 (the "
                           "NELBO) or prior ode")
    if command in ("fid", "samples") and settings.get("sampler") == "pc" and settings.get("pc_steps") is None:
        raise SettingError(f"{where}: sampler pc needs pc_steps")
    if command in ("fid", "samples") and settings.get("latent") == "matched_normal" and settings.get("sampler") == "pc":
        raise SettingError(f"{where}: latent matched_normal draws no sampler (the LSGM control); drop sampler pc")
    if command == "cost" and settings.get("fd_samples") == 1:
        raise SettingError(f"{where}: fd_samples = 1: a Fréchet distance needs at least 2 samples (or 0: none)")


def add_arguments(parser: argparse.ArgumentParser, command: str, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per setting of ``command`` (``skip``: those the command declares itself)."""
    for name, s in SETTINGS[command].items():
        if name in skip:
            continue
        default = s.default
        note = f"default: {s.unset}" if default is None and s.unset else f"default: {default}"
        kw: dict[str, Any] = {"type": s.argparse_type(), "default": default, "help": f"{s.help} ({note})"}
        if s.many:
            kw["nargs"] = "*" if s.unset else "+"
        if s.choices is not None:
            kw["metavar"] = "|".join(map(str, s.choices)) if len(s.choices) <= 3 else name.upper()
            kw["help"] += f"; one of {', '.join(map(str, s.choices))}"
        if name == "samplers":
            parser.add_argument("--sampler", dest="samplers", **kw)
        else:
            parser.add_argument(s.flag, **kw)


def check_args(command: str, args: argparse.Namespace, where: str) -> None:
    """The cross-setting rules on parsed command-line arguments (SettingError: one line)."""
    values = {name: getattr(args, name) for name in SETTINGS[command] if hasattr(args, name)}
    check_combination(command, {**defaults(command), **{k: v for k, v in values.items() if v is not None}}, where)
