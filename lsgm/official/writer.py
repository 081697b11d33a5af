"""Official-format NVlabs/LSGM checkpoints, written from this project's modules: the inverse of
:mod:`lsgm.official.keymap` (every rule's ``inverse``), with the official ``args`` namespace and file names.

``lsgm make-release --root DIR`` writes a miniature release: every file the released scale expects
(:class:`lsgm.plan.ReleasedPlan`, ``scales.released.release``), each an official checkpoint of its recipe's README
command at miniature sizes (the mini scale's widths and counts), randomly initialised. It is what the tests and CI run
the released scale on, without NVIDIA's files; its numbers mean nothing.

* stage 1 (``train_vae.py``): ``epoch``, ``global_step``, ``args``, ``vae_state_dict``, ``vae_optimizer``,
  ``grad_scalar``;
* stage 2 (``train_vada.py``): ``checkpoint.pt`` adds ``dae_state_dict`` and ``dae_optimizer`` with the EMA in each
  parameter's optimizer state (``util/ema.py``), the EMA differing from the raw weights; ``checkpoint_fid.pt`` /
  ``checkpoint_nll.pt`` hold the EMA weights as ``dae_state_dict`` and no optimizer. Its ``args`` carry the NVAE
  architecture fields of its stage-1 args (``utils.override_architecture_fields``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from lsgm.official.keymap import KeyMap, ncsnpp_keymap, nvae_keymap

# what the official scripts add to args at run time (paths, distributed set-up)
RUNTIME_ARGS = {"data": "/data", "root": "/checkpoints", "save": "/checkpoints/expr", "distributed": True,
                "global_rank": 0, "local_rank": 0, "num_total_iter": 1000}
# miniature sizes in official flags (the mini scale's: lsgm/plan/common.py RUN_SIZE_KEYS, config.yaml scales.mini)
MINIATURE = {"stage1": {"num_channels_enc": 8, "num_channels_dec": 8, "num_preprocess_cells": 1,
                        "num_postprocess_cells": 1, "num_groups_per_scale": 2, "num_latent_per_group": 4,
                        "num_cell_per_cond_enc": 1, "num_cell_per_cond_dec": 1},
             "stage2": {"num_channels_dae": 8, "num_cell_per_scale_dae": 1, "embedding_dim": 16}}


def official_state(km: KeyMap, ours: dict) -> dict:
    """Our state dict -> the official one: each rule inverted, the official aliases filled, in the official
    registration order (the rules walk it; an attention block's NIN_i.W before its NIN_i.b)."""
    out: dict[str, torch.Tensor] = {}
    for rule in km.rules:
        if not rule.sources:
            continue  # ours only (the all-true `active` buffer)
        value = ours[rule.ours]
        if rule.fn is None:
            parts = (value,)
        elif rule.inverse is None:
            raise ValueError(f"the key map has no inverse for {rule.ours} ({rule.why})")
        else:
            parts = rule.inverse(value)
        for source, tensor in zip(rule.sources, parts, strict=True):
            out[source] = tensor.detach().clone().contiguous()
    for alias, target in km.aliases:
        out[alias] = out[target]
    return _ordered(out)


def _ordered(out: dict) -> dict:
    """Official order: within each attention block, NIN_0.W, NIN_0.b, NIN_1.W, ... (ours builds W's, then b's)."""
    keys, result, i = list(out), {}, 0
    while i < len(keys):
        match = re.fullmatch(r"(.*)\.NIN_\d\.[Wb]", keys[i])
        if match is None:
            result[keys[i]] = out[keys[i]]
            i += 1
            continue
        block = [k for k in keys[i:] if k.startswith(f"{match[1]}.NIN_")]
        for k in sorted(block, key=lambda k: (int(k.rsplit(".", 2)[1][4:]), k.endswith(".b"))):
            result[k] = out[k]
        i += len(block)
    return result


def official_args(recipe: str, stage: str, vae_args: dict | None = None) -> dict:
    """The ``args`` of the recipe's README command (parser defaults filled in), at miniature sizes, with what the
    scripts add at run time; stage 2 also carries its stage-1 architecture fields (as ``train_vada.py`` copies them)."""
    from lsgm import recipes
    from lsgm.official.importer import ARCH_FIELDS

    run = recipes.official_run(recipe, stage)
    args = {**run.args, **RUNTIME_ARGS, **MINIATURE[stage]}
    if stage == "stage2":
        args.update({f: vae_args[f] for f in ARCH_FIELDS}, vae_checkpoint="/checkpoints/expr/vae/checkpoint.pt")
    return args


def build_modules(stage: str, args: dict, seed: int):
    """Our NVAE (and score network) for official ``args``, randomly initialised from ``seed``."""
    from lsgm.config import RunConfig, from_dict
    from lsgm.data import dataset_info
    from lsgm.nets.nvae import NVAE
    from lsgm.official.importer import translate_args
    from lsgm.score import build_score
    from lsgm.diffusion.sde import make_sde

    cfg_dict, _, _ = translate_args(stage, args, "miniature")
    cfg = from_dict(RunConfig, {**cfg_dict, "name": "miniature"})
    torch.manual_seed(seed)
    vae = NVAE(cfg.vae, dataset_info(cfg.data.name))
    score = build_score(cfg, tuple(vae.latent_shape), make_sde(cfg.sde)) if stage == "stage2" else None
    return vae, score


def checkpoint_blob(stage: str, args: dict, seed: int, name: str = "checkpoint.pt") -> dict:
    """One official checkpoint (a dict of plain data, tensors and the ``args`` Namespace)."""
    vae, score = build_modules(stage, args, seed)
    blob = {"epoch": int(args["epochs"]), "global_step": 1000 + seed, "args": argparse.Namespace(**args),
            "vae_state_dict": official_state(nvae_keymap(vae), vae.state_dict())}
    if score is None:
        blob.update(vae_optimizer={"state": {}, "param_groups": [{"lr": float(args["learning_rate_vae"]),
                                                                  "params": []}]},
                    grad_scalar={"scale": 65536.0})
        return blob
    dae = official_state(ncsnpp_keymap(score), score.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    ema = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) * (v.std() if v.numel() > 1 else 1.0)
           for k, v in dae.items()}
    if name == "checkpoint.pt":  # raw weights + the EMA inside the dae optimizer (evaluate_vada.py swaps it in)
        blob.update(dae_state_dict=dae, vae_optimizer={"state": {}, "param_groups": []}, grad_scalar={"scale": 65536.0},
                    dae_optimizer={"state": {i: {"step": torch.tensor(1000.0), "ema": ema[k]} for i, k in enumerate(dae)},
                                   "param_groups": [{"lr": float(args["learning_rate_dae"]), "eps": 1e-4,
                                                     "params": list(range(len(dae)))}]})
    else:  # checkpoint_fid.pt / checkpoint_nll.pt: the EMA already swapped in, no optimizer
        blob["dae_state_dict"] = ema
    return blob


def write_release(plan, root: str | Path, seed: int = 0) -> list[Path]:
    """Every file of ``plan.release_files()`` under ``root``, each an official checkpoint of its recipe at miniature
    sizes; a stage-2 file carries its stage-1 file's architecture fields."""
    root = Path(root)
    written, stage1_args = [], {}
    files = sorted(plan.release_files(), key=lambda f: f.stage)  # stage 1 first
    for i, f in enumerate(files):
        path = root / f.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if f.stage == "stage1":
            args = stage1_args[f.lsgm] = official_args(f.recipe, "stage1")
        else:
            args = official_args(f.recipe, "stage2", stage1_args[f.lsgm])
        torch.save(checkpoint_blob(f.stage, args, seed + i, path.name), path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from lsgm.plan import PlanError, ReleasedPlan
    from lsgm.plan.cli import load_config

    p = argparse.ArgumentParser(prog="lsgm make-release", description="write a miniature NVlabs/LSGM release: every "
                                "file the released scale expects, official-format checkpoints at miniature sizes "
                                "(random weights: plumbing only, never NVIDIA's)")
    p.add_argument("--root", required=True, help="the folder to write (then: --config released_root=ROOT)")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--configfile", nargs="+", default=[], metavar="FILE")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from lsgm.io import OutputError, check_output

    try:
        check_output(a.root, "--root", folder=True)
        plan = ReleasedPlan(load_config(a.config, a.configfile))
    except (PlanError, OutputError) as err:
        print(f"lsgm make-release: error: {err}", file=sys.stderr)
        return 2
    written = write_release(plan, a.root, a.seed)
    print(f"wrote {len(written)} miniature official checkpoints under {a.root} (random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
