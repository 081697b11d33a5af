"""``lsgm import-official``: an NVlabs/LSGM checkpoint -> this harness's ``model.pt``.

A stage-1 checkpoint (``train_vae.py``: ``vae_state_dict`` + ``args``) becomes a ``vae`` run; a stage-2 checkpoint
(``train_vada.py``: ``vae_state_dict`` + ``dae_state_dict`` + ``args``) becomes an ``lsgm`` run, so the released
models can be evaluated here (``lsgm evaluate nll|fid|cost --model model.pt``).

* **Loading.** ``torch.load(weights_only=True)`` with exactly one class allowed beyond plain data:
  ``argparse.Namespace`` (the official ``args``). Anything else is refused with a one-line error.
* **Config.** The checkpoint's ``args`` are read as an official command line (``lsgm.recipes.official_args``: the
  parser defaults of ``official.yaml`` fill what an older checkpoint lacks) and translated with the same
  ``stage1_config`` / ``stage2_config`` the training plan uses; the result must validate as a ``RunConfig``.
  ``train_vada.py`` copies the NVAE architecture fields from the VAE checkpoint's args into its own
  (``utils.override_architecture_fields``), so a stage-2 checkpoint describes its VAE by itself; ``--vae-checkpoint``
  is only needed for a checkpoint whose args lack some of them (and is cross-checked when given).
* **Weights** (:mod:`lsgm.official.keymap`). An explicit key-by-key map (official key(s) -> our key, with a transform where the layouts differ),
  built by walking this project's modules in the order the official constructors register theirs. Official keys
  left over, official keys missing, our keys left unfilled or a shape that differs are one-line errors. Our
  spectral-regularisation power-iteration state (``sn_u``/``sn_v``/``sr_calls``/``sr_counter.calls``) has no official
  counterpart and starts fresh; it is not used by any evaluation.
* **EMA.** As ``evaluate_vada.py``: a ``checkpoint.pt`` keeps the raw score weights in ``dae_state_dict`` and the EMA
  in the optimizer wrapper (``util/ema.py``: ``dae_optimizer['state'][i]['ema']``, ``i`` the parameter's position in
  ``dae.parameters()``), swapped in for evaluation; ``checkpoint_fid.pt`` / ``checkpoint_nll.pt`` (no optimizer) hold
  the EMA weights already. Here the choice follows the content (an optimizer with EMA state present or not), and the
  model file records which it was. The VAE has no EMA officially.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

from lsgm.io import file_sha256
from lsgm.model_file import model_record, write_model
from lsgm.official.keymap import (
    OfficialImportError,
    _first,
    convert_state,
    ema_from_optimizer,
    is_fresh_buffer,
    ncsnpp_keymap,
    nvae_keymap,
)
from lsgm.utils import UserFileError, load_torch_file

MAPPING_VERSION = 1
# utils.override_architecture_fields: the NVAE fields train_vada.py copies from the VAE checkpoint's args
ARCH_FIELDS = ("arch_instance", "num_nf", "num_latent_scales", "num_groups_per_scale", "num_latent_per_group",
               "num_channels_enc", "num_preprocess_blocks", "num_preprocess_cells", "num_cell_per_cond_enc",
               "num_channels_dec", "num_postprocess_blocks", "num_postprocess_cells", "num_cell_per_cond_dec",
               "decoder_dist", "num_x_bits", "log_sig_q_scale", "progressive_input_vae", "channel_mult")

# ----------------------------------------------------------------------------------------------- loading
def load_official(path: str | Path) -> dict:
    """``torch.load`` of an official checkpoint as data: tensors, plain containers and ``argparse.Namespace``."""
    path = Path(path)
    try:
        blob = load_torch_file(path, "checkpoint", "pass an NVlabs/LSGM train_vae.py / train_vada.py checkpoint",
                               allowed=(argparse.Namespace,))
    except UserFileError as err:
        raise OfficialImportError(str(err)) from None
    if not isinstance(blob, dict):
        raise OfficialImportError(f"{path} is not an NVlabs/LSGM checkpoint (a {type(blob).__name__}, not a dict)")
    return blob


def checkpoint_stage(blob: dict, path: Path) -> str:
    """``stage1`` (train_vae.py) or ``stage2`` (train_vada.py) from the checkpoint's entries."""
    if "vae_state_dict" in blob and "args" in blob:
        return "stage2" if "dae_state_dict" in blob else "stage1"
    raise OfficialImportError(f"{path} is not an NVlabs/LSGM train_vae.py / train_vada.py checkpoint (it has "
                              f"{_first(sorted(map(str, blob)))}; expected vae_state_dict, args[, dae_state_dict])")


def checkpoint_args(blob: dict, path: Path) -> dict:
    args = blob.get("args")
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise OfficialImportError(f"{path}: 'args' is a {type(args).__name__}, not the official argparse.Namespace")


def json_safe(value: Any) -> Any:
    """Official args as JSON-compatible data (for the model file's meta)."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    return repr(value)


# ----------------------------------------------------------------------------------------------- config
def _official_run(stage: str, args: dict, source: str):
    """An :class:`lsgm.recipes.OfficialRun` from checkpoint args: keys the script's parser defines are its flags;
    returns (run, ignored keys (runtime additions such as global_rank), defaulted keys (absent from the args))."""
    from lsgm import recipes

    script = recipes.STAGE_SCRIPTS[stage]
    known = recipes.official()["parser_defaults"][script]
    flags = {k: v for k, v in args.items() if k in known}
    if isinstance(flags.get("channel_mult"), int):
        flags["channel_mult"] = [flags["channel_mult"]]
    try:
        run = recipes.OfficialRun("imported", stage, source, "", recipes.official_args(script, flags), flags)
    except recipes.RecipeError as err:
        raise OfficialImportError(str(err)) from None
    return run, sorted(set(args) - set(known)), sorted(set(known) - set(args))


def _translate(fn, run) -> tuple[dict, list[str]]:
    from lsgm import recipes

    try:
        return fn(run)
    except recipes.RecipeError as err:
        raise OfficialImportError(f"the checkpoint's args are not modelled here: {err}") from None


def translate_args(stage: str, args: dict, source: str, vae_args: dict | None = None) -> tuple[dict, list[str], dict]:
    """(RunConfig mapping, deviations, notes) of an official checkpoint's ``args``."""
    from lsgm import recipes

    dataset = args.get("dataset")
    if dataset not in recipes.DATASET_NAMES:
        raise OfficialImportError(f"--dataset {dataset!r} of the checkpoint is not modelled here "
                                  f"(supported: {', '.join(recipes.DATASET_NAMES)})")
    notes: dict = {}
    if stage == "stage1":
        run, notes["ignored_args"], notes["defaulted_args"] = _official_run("stage1", args, source)
        cfg, deviations = _translate(recipes.stage1_config, run)
    else:
        run, notes["ignored_args"], notes["defaulted_args"] = _official_run("stage2", args, source)
        notes["ignored_args"] = [k for k in notes["ignored_args"] if k not in ARCH_FIELDS]
        cfg, deviations = _translate(recipes.stage2_config, run)
        arch = {f: args[f] for f in ARCH_FIELDS if f in args}
        if vae_args is not None:
            clash = [f for f in ARCH_FIELDS if f in arch and f in vae_args and arch[f] != vae_args[f]]
            if clash:
                raise OfficialImportError(
                    f"--vae-checkpoint disagrees with the stage-2 checkpoint's VAE architecture on {_first(clash)} "
                    f"(e.g. {clash[0]}: {vae_args[clash[0]]!r} vs {arch[clash[0]]!r}); pass the VAE it was "
                    "trained from")
            notes["vae_fields_from_vae_checkpoint"] = sorted(f for f in ARCH_FIELDS if f in vae_args and f not in arch)
            arch = {**{f: vae_args[f] for f in ARCH_FIELDS if f in vae_args}, **arch}
        missing = [f for f in ARCH_FIELDS if f not in arch]
        if missing:
            raise OfficialImportError(f"the stage-2 checkpoint's args lack the VAE architecture field(s) "
                                      f"{_first(missing)}; pass --vae-checkpoint (the stage-1 checkpoint it was "
                                      "trained from)")
        vae_run, _, _ = _official_run("stage1", {**arch, "dataset": dataset, "use_se": args.get("use_se", False)},
                                      source)
        vae_cfg, _ = _translate(recipes.stage1_config, vae_run)
        cfg["vae"] = vae_cfg["vae"]
    return cfg, deviations, notes


def check_expected(path: Path, stage: str, args: dict, expect: dict) -> None:
    """The checkpoint is the stage and dataset its place in a release says (one line naming both)."""
    from lsgm import recipes

    dataset = recipes.DATASET_NAMES.get(args.get("dataset"), args.get("dataset"))
    want = (expect.get("stage", stage), expect.get("dataset", dataset))
    if (stage, dataset) != want:
        script = {"stage1": "train_vae.py", "stage2": "train_vada.py"}
        raise OfficialImportError(f"{path} is a {dataset} {script[stage]} checkpoint; its place in the release holds a "
                                  f"{want[1]} {script[want[0]]} checkpoint: put the right file there")


# ----------------------------------------------------------------------------------------------- import
IMPORT_DEVIATION = ("import: weights converted from an NVlabs/LSGM checkpoint (lsgm import-official, mapping v{v}); "
                    "the spectral-regularisation power-iteration buffers (sn_u, sn_v, sr_calls, sr_counter.calls) have "
                    "no official counterpart and start fresh (they do not affect evaluation)")
INACTIVE_DEVIATION = ("import: the official drop_inactive_var mask (NCSNpp.is_active) is not saved in checkpoints; "
                      "the score's `active` buffer is all-true, as in the official evaluation (inactive channels keep "
                      "their stored mixing logit)")


def import_checkpoint(path: str | Path, vae_checkpoint: str | Path | None = None, name: str | None = None,
                      data_root: str | None = None, data_sizes: tuple[int, int] | None = None,
                      expect: dict | None = None) -> dict:
    """Convert an official checkpoint into this harness's model-file dict (see the module docstring).
    ``data_sizes``: (n_train, n_test) of a miniature dataset (config ``data.n_train`` / ``data.n_test``);
    ``expect``: ``{"stage": ..., "dataset": ...}`` the checkpoint must be (the released scale's layout)."""
    from lsgm.config import ConfigError, RunConfig, from_dict, to_dict
    from lsgm.data import dataset_info
    from lsgm.score import build_score
    from lsgm.nets.nvae import NVAE
    from lsgm.diffusion.sde import make_sde
    from lsgm.io import provenance

    path = Path(path)
    blob = load_official(path)
    stage = checkpoint_stage(blob, path)
    args = checkpoint_args(blob, path)
    vae_args = None
    if vae_checkpoint is not None and stage == "stage1":
        raise OfficialImportError(f"{path} is a stage-1 (train_vae.py) checkpoint; --vae-checkpoint is for "
                                  "stage 2 only")
    if vae_checkpoint is not None:
        vae_blob = load_official(vae_checkpoint)
        vae_args = checkpoint_args(vae_blob, Path(vae_checkpoint))
        del vae_blob
    if expect is not None:
        check_expected(path, stage, args, expect)
    cfg_dict, deviations, notes = translate_args(stage, args, str(path), vae_args)
    deviations = list(deviations) + [IMPORT_DEVIATION.format(v=MAPPING_VERSION)]
    if stage == "stage2" and args.get("drop_inactive_var"):
        deviations.append(INACTIVE_DEVIATION)
    cfg_dict["name"] = name or f"imported/{path.parent.name or 'checkpoint'}/{path.stem}"
    cfg_dict["deviations"] = sorted(set(deviations))
    if data_root is not None:
        cfg_dict["data"]["root"] = str(data_root)
    if data_sizes is not None:
        cfg_dict["data"]["n_train"], cfg_dict["data"]["n_test"] = (int(n) for n in data_sizes)
    try:
        cfg = from_dict(RunConfig, cfg_dict)
    except ConfigError as err:
        raise OfficialImportError(f"the translated config does not validate: {err}") from None

    data = dataset_info(cfg.data.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the fresh SR buffers: reproducible
        vae = NVAE(cfg.vae, data)
        score = build_score(cfg, tuple(vae.latent_shape), make_sde(cfg.sde)) if stage == "stage2" else None
    vae_state = convert_state(nvae_keymap(vae), blob["vae_state_dict"], vae.state_dict(), "VAE")
    vae.load_state_dict(vae_state)  # strict: a last check that the state fits the module
    state, ema, ema_source = {"vae": vae_state}, None, ("none", "stage 1: no score network; the VAE has no EMA")
    if score is not None:
        km = ncsnpp_keymap(score)
        template = score.state_dict()
        dae = blob["dae_state_dict"]
        state["score"] = convert_state(km, dae, template, "score")
        score.load_state_dict(state["score"])
        ema_dae = ema_from_optimizer(dae, blob.get("dae_optimizer"))
        if ema_dae is not None:
            ema = convert_state(km, ema_dae, template, "score EMA")
            score.load_state_dict(ema)
            ema_source = ("dae_optimizer", ("the EMA held by the dae optimizer wrapper, swapped in as "
                                            "evaluate_vada.py does for checkpoint.pt; state.score keeps the raw "
                                            "weights"))
        elif "dae_optimizer" in blob:
            ema_source = ("none", "the dae optimizer holds no EMA state (--ema_decay 0): the raw weights are evaluated")
        else:
            ema = state["score"]
            ema_source = ("dae_state_dict", ("no optimizer: dae_state_dict already holds the EMA weights (the "
                                             "checkpoint_fid.pt / checkpoint_nll.pt layout)"))
    step = int(blob.get("global_step", -1)) if isinstance(blob.get("global_step"), int) else -1
    meta = {
        "imported": {
            "source": str(path.resolve()), "sha256": file_sha256(path), "stage": stage,
            "script": "train_vae.py" if stage == "stage1" else "train_vada.py",
            "epoch": blob.get("epoch"), "global_step": blob.get("global_step"),
            "vae_checkpoint": str(Path(vae_checkpoint).resolve()) if vae_checkpoint is not None else None,
            "vae_sha256": file_sha256(vae_checkpoint) if vae_checkpoint is not None else None,
            "mapping_version": MAPPING_VERSION, "ema_source": ema_source[0], "ema_note": ema_source[1],
            "fresh_buffers": {"count": sum(is_fresh_buffer(k) for part in state.values() for k in part),
                              "names": ["*.sn_u", "*.sn_v", "sr_calls", "backbone.sr_counter.calls"],
                              "why": "spectral-regularisation power-iteration state: no official counterpart, "
                                     "initialised fresh (seed 0), unused by evaluation"},
            "unused_entries": sorted(str(k) for k in blob if k not in ("vae_state_dict", "dae_state_dict", "args",
                                                                       "epoch", "global_step")),
            **notes,
        },
        "official_args": json_safe(args),
        "vae_official_args": json_safe(vae_args) if vae_args is not None else None,
        "deviations": list(cfg.deviations),
    }
    return model_record(config=to_dict(cfg), status="completed", step=step, reason=None, state=state, ema=ema,
                        meta=meta, provenance=provenance("cpu", config=to_dict(cfg)))


def main(argv: list[str] | None = None) -> int:
    from lsgm.io import OutputError, check_output
    p = argparse.ArgumentParser(prog="lsgm import-official",
                                description="Convert an NVlabs/LSGM train_vae.py (stage 1) or train_vada.py (stage 2) "
                                            "checkpoint into this harness's model.pt (evaluate it with lsgm evaluate).")
    p.add_argument("checkpoint", help="official checkpoint.pt / checkpoint_fid.pt / checkpoint_nll.pt")
    p.add_argument("--out", required=True, help="model.pt to write (atomically)")
    p.add_argument("--vae-checkpoint", default=None,
                   help="stage 2 only: the stage-1 checkpoint, for VAE architecture fields the stage-2 args lack "
                        "(checked for agreement when given)")
    p.add_argument("--name", default=None, help="run name recorded in the config (default: imported/<dir>/<file>)")
    p.add_argument("--data-root", default=None, help="dataset folder recorded as the config's data.root (else pass "
                                                        "--root to lsgm evaluate nll)")
    p.add_argument("--data-sizes", type=int, nargs=2, default=None, metavar=("N_TRAIN", "N_TEST"),
                   help="a miniature dataset's split sizes (config data.n_train, data.n_test)")
    p.add_argument("--expect", nargs=2, default=None, metavar=("STAGE", "DATASET"),
                   help="refuse a checkpoint that is not this stage (stage1|stage2) and dataset (the released scale)")
    a = p.parse_args(argv)
    try:
        check_output(a.out)
        expect = dict(zip(("stage", "dataset"), a.expect)) if a.expect else None
        model = import_checkpoint(a.checkpoint, a.vae_checkpoint, a.name, a.data_root, a.data_sizes, expect)
    except (OfficialImportError, OutputError) as err:
        print(f"lsgm import-official: error: {err}", file=sys.stderr)
        return 2
    write_model(a.out, model)
    cfg, imp = model["config"], model["meta"]["imported"]
    ema = f" (score EMA from: {imp['ema_source']})" if cfg["kind"] == "lsgm" else ""
    print(f"wrote {a.out}: {cfg['kind']} run on {cfg['data']['name']} from {imp['script']} step {model['step']}{ema}; "
          f"evaluate with: lsgm evaluate nll|fid|cost --model {a.out} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
