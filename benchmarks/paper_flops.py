"""FLOPs and activation memory of every paper run, counted without a GPU and without computing anything: the networks
are built from the RESOLVED paper run configs (``lsgm.plan.Plan(config.yaml, "paper")``) on PyTorch's ``meta`` device
(shapes only, no data) and their trainers' own ``train_step`` runs under ``torch.utils.flop_counter.FlopCounterMode``.

Per training run (every job of ``lsgm plan --scale paper``):
  train_step   the FLOPs of one optimizer step of ONE process (the trainer's ``train_step``: forward, loss, backward,
               SR), counted at 1 image and at the official per-GPU batch; FLOPs are linear in the batch, so the file
               keeps ``fixed`` + ``per_sample`` (the batch-independent part is the SR power iterations);
  memory       the bytes of the tensors autograd saves for the backward pass (activations; distinct storages), per
               image, at the dtype of the meta pass (fp32: under bf16 autocast a GPU keeps bf16 copies of convolution
               inputs as well, so this is an estimate, not a measurement), and the parameter counts (the plan adds
               gradients, optimizer states and EMA copies);
  eval         the FLOPs per image of one network evaluation: the score network in the probability-flow ODE
               (sampling), the same with the Hutchinson divergence (the ODE likelihood), the decoder, the encoder.
Also: torchvision's Inception-v3 (the architecture torch-fidelity's FID network has) per 299x299 image, and the check
against a published training time (the NVAE README's CIFAR-10 model: "Eight 16-GB V100 GPUs ... about 55 hours").

FlopCounterMode counts matrix multiplications and convolutions (2 FLOPs per multiply-add), not element-wise
operations, normalisations or memory traffic: the GPU-hours ``lsgm plan`` derives from these counts assume a
utilisation of the GPU's peak, which the published check calibrates.

    python benchmarks/paper_flops.py [--out benchmarks/results/paper_flops.json] [--runs STEM ...] [--check-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from lsgm.plan import Plan  # noqa: E402
from lsgm.plan.cluster import GPUS  # noqa: E402
from lsgm.plan.cost import Estimate, flop_fingerprint  # noqa: E402

META = torch.device("meta")
# The published check: NVlabs/NVAE README, CIFAR-10 (train.py flags), "Eight 16-GB V100 GPUs ... about 55 hours"
NVAE_CIFAR10 = {
    "source": "NVlabs/NVAE README.md, CIFAR-10: 'Eight 16-GB V100 GPUs are used for training NVAE on CIFAR-10. "
              "Training takes about 55 hours.' (train.py --num_channels_enc 128 --num_channels_dec 128 --epochs 400 "
              "--num_postprocess_cells 2 --num_preprocess_cells 2 --num_latent_scales 1 --num_latent_per_group 20 "
              "--num_cell_per_cond_enc 2 --num_cell_per_cond_dec 2 --num_preprocess_blocks 1 --num_postprocess_blocks 1 "
              "--num_groups_per_scale 30 --batch_size 32 --weight_decay_norm 1e-2 --num_nf 1 --num_process_per_node 8 "
              "--use_se --res_dist --fast_adamax; arch_instance: train.py's default res_mbconv)",
    "gpus": 8, "gpu": "V100-16GB", "hours": 55.0, "epochs": 400, "per_gpu_batch": 32,
    "vae": {"num_channels": 128, "channel_mult": [1, 2], "num_preprocess_blocks": 1, "num_preprocess_cells": 2,
            "num_postprocess_blocks": 1, "num_postprocess_cells": 2, "num_latent_scales": 1, "num_groups_per_scale": 30,
            "num_latent_per_group": 20, "num_cell_per_cond_enc": 2, "num_cell_per_cond_dec": 2,
            "arch_instance": "res_mbconv", "use_se": True, "num_nf": 1},
}


_AUTOCAST = torch.autocast


def _autocast(device_type: str, *args, **kwargs):
    """``torch.autocast`` refuses the meta device (the score network turns autocast off around its time embedding):
    there it is a no-op; anywhere else torch's own."""
    return contextlib.nullcontext() if device_type == "meta" else _AUTOCAST(device_type, *args, **kwargs)


torch.autocast = _autocast  # this benchmark's process only


class MetaScalars(TorchDispatchMode):
    """A Python number read from a meta tensor (``.item()``, ``int()``, ``bool()``: logging, finiteness checks, the SR
    call counter) is 1: the trainers' control flow takes its steady-state branch, and no number is computed."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return 1.0 if args[0].is_floating_point() else 1
        return func(*args, **(kwargs or {}))


class _Totals:
    """Stands in for FlopCounterMode's ModuleTracker: totals only (its per-module hooks break ``autograd.grad`` on a
    leaf, which the likelihood's divergence takes)."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def flop_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Totals()
    return counter


class MetaRun:
    """What a trainer's ``train_step`` asks of :class:`lsgm.train.run.Run`, on meta tensors, one process: micro-batches
    with their weights, gradient routing, and an optimizer step that only clears the gradients (an optimizer's
    element-wise update has no matrix FLOPs; its state is counted from the parameters)."""

    device = META
    amp = "off"

    def __init__(self, total_steps: int):
        self.total_steps = total_steps

    def micro_batches(self, batches, *modules):
        for batch in batches:
            yield batch, 1.0 / len(batches)

    def autocast(self):
        return contextlib.nullcontext()

    def force_nan(self, loss, step):
        return loss

    def check_finite(self, step, **values):
        return None

    def backward(self, loss, params, retain_graph=False):
        torch.autograd.backward(loss, inputs=params, retain_graph=retain_graph)

    def step(self, step, groups):
        for opt, _ in groups.values():
            opt.zero_grad(set_to_none=True)
        return {}


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _task(cfg, kind: str, run: MetaRun):
    """The trainer of ``cfg`` with its networks on the meta device (no data, no checkpoint: what ``train_step`` uses)."""
    from lsgm.data import dataset_info
    from lsgm.diffusion.objectives import kl_balance_alphas
    from lsgm.diffusion.sde import make_sde
    from lsgm.train.ema import EMA
    from lsgm.train.optim import make_optimizer, trainable

    info = dataset_info(cfg.data.name)
    with torch.device(META):
        if kind == "vae":
            from lsgm.nets.nvae import NVAE
            from lsgm.train.vae import VAETask

            task = object.__new__(VAETask)
            task.vae = NVAE(cfg.vae, info)
            task.opt = make_optimizer(trainable(task.vae), cfg.train.vae_optim)
            task.alphas = kl_balance_alphas(cfg.vae.num_latent_scales, cfg.vae.num_groups_per_scale)
            task.modules = {"vae": task.vae}
        elif kind == "lsgm":
            from lsgm.methods import q_trains_score
            from lsgm.nets.nvae import NVAE
            from lsgm.score import build_score
            from lsgm.diffusion.time_sampling import make_q_sampler, make_time_sampler
            from lsgm.train.lsgm import LSGMTask

            task, obj = object.__new__(LSGMTask), cfg.objective
            task.obj, task.sde = obj, make_sde(cfg.sde)
            with torch.device("cpu"):  # the samplers' tables are small CPU tensors, as in training
                task.p_sampler = make_time_sampler(obj.weighting, obj.sampling, task.sde, cfg.sde.t_eps)
                task.q_sampler = make_q_sampler(obj.q_objective, task.p_sampler)
            vae = NVAE(cfg.vae, info)
            task.score = build_score(cfg, vae.latent_shape, task.sde)
            task.train_vae = obj.train_vae
            task.vae = vae if task.train_vae else vae.eval().requires_grad_(False)
            task.opt_score = make_optimizer(trainable(task.score), cfg.train.score_optim)
            if task.train_vae:
                task.opt_vae = make_optimizer(trainable(task.vae), cfg.train.vae_optim)
            task.ema = EMA(task.score, cfg.train.ema_decay)
            task.score_by_q = task.train_vae and q_trains_score(obj.weighting, obj.q_objective)
            task.modules = {"vae": task.vae, "score": task.score}
        else:
            from lsgm.score import build_score
            from lsgm.diffusion.time_sampling import make_time_sampler
            from lsgm.train.sgm import SGMTask

            task = object.__new__(SGMTask)
            task.sde = make_sde(cfg.sde)
            with torch.device("cpu"):
                task.sampler = make_time_sampler(cfg.objective.weighting, cfg.objective.sampling, task.sde,
                                                 cfg.sde.t_eps)
            task.net = build_score(cfg, (info.channels, info.image_size, info.image_size), task.sde)
            task.opt = make_optimizer(trainable(task.net), cfg.train.score_optim)
            task.ema = EMA(task.net, cfg.train.ema_decay)
            task.modules = {"score": task.net}
    task.run, task.cfg, task.info = run, cfg, info
    return task


def _images(info, batch: int) -> torch.Tensor:
    return torch.empty(batch, info.channels, info.image_size, info.image_size, device=META)


def count_step(cfg, kind: str, batch: int, steps: int) -> tuple[float, float]:
    """(FLOPs, saved-activation bytes) of one ``train_step`` of one process at ``batch`` images, mid-training."""
    task = _task(cfg, kind, MetaRun(steps))
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # held until the count ends: a freed storage's address is never reused here
        saved[storage._cdata] = storage
        return t

    with flop_counter() as counter, MetaScalars(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        task.train_step([_images(task.info, batch)], steps // 2)
    return float(counter.get_total_flops()), float(sum(s.nbytes() for s in saved.values()))


def count(fn) -> float:
    with flop_counter() as counter, MetaScalars():
        fn()
    return float(counter.get_total_flops())


def linear(fn, batch: int) -> dict:
    """``fn(b)``'s FLOPs as ``fixed + per_sample x b`` from b = 1 and b = ``batch`` (exact for these networks)."""
    one, many = fn(1), fn(batch)
    per = (many - one) / (batch - 1) if batch > 1 else one
    return {"fixed": one - per, "per_sample": per}


def count_eval(cfg, kind: str) -> dict:
    """FLOPs per image of one network evaluation: sampling NFE, likelihood NFE (score + Hutchinson divergence), decoder,
    encoder (a VAE: its whole forward pass, the NLL's unit)."""
    from lsgm.diffusion.likelihood import AugmentedFlow
    from lsgm.diffusion.sampling import ProbabilityFlow

    task = _task(cfg, kind, MetaRun(1))
    for module in task.modules.values():  # evaluation: no parameter gradients (the likelihood's are w.r.t. z only)
        module.requires_grad_(False)
    info, out = task.info, {}
    if kind in ("lsgm", "sgm"):
        net = (task.score if kind == "lsgm" else task.net).eval()
        shape = tuple(task.vae.latent_shape) if kind == "lsgm" else (info.channels, info.image_size, info.image_size)
        t_range = (cfg.sde.t_eps, 1.0)

        def state(b):
            return torch.empty(b, *shape, device=META)

        def sample_nfe(b):
            with torch.no_grad():
                ProbabilityFlow(net, task.sde, t_range)(torch.tensor(0.5, device=META), state(b))

        def nll_nfe(b):
            z = state(b)
            AugmentedFlow(net, task.sde, torch.empty_like(z), t_range)(torch.tensor(0.5, device=META), (z, z[:, 0, 0, 0]))

        out["sample_nfe"] = count(lambda: sample_nfe(2)) / 2
        out["nll_nfe"] = count(lambda: nll_nfe(2)) / 2
    if kind in ("vae", "lsgm"):
        vae = task.vae.eval()
        with torch.no_grad():
            out["decoder"] = count(lambda: vae.sample(2)) / 2
            out["encoder_decoder"] = count(lambda: vae(_images(info, 2))) / 2
    return out


def inception_flops() -> float:
    from torchvision.models import inception_v3

    with torch.device(META):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    with torch.no_grad():
        return count(lambda: net(torch.empty(2, 3, 299, 299, device=META))) / 2


def published_check() -> dict:
    """Our FLOPs of the NVAE README's CIFAR-10 model, its published time, and the utilisation they imply."""
    from lsgm import recipes
    from lsgm.config import RunConfig, from_dict

    spec = NVAE_CIFAR10
    cfg = from_dict(RunConfig, {"kind": "vae", "name": "nvae-readme-cifar10", "data": {"name": "cifar10"},
                                "vae": spec["vae"], "train": {"global_batch": spec["per_gpu_batch"] * spec["gpus"]}})
    steps = recipes.official_steps(spec["epochs"], "cifar10", spec["gpus"], spec["per_gpu_batch"] * spec["gpus"])
    flops, _ = count_step(cfg, "vae", spec["per_gpu_batch"], steps)
    total = flops * spec["gpus"] * steps
    estimate = Estimate(GPUS[spec["gpu"]])  # what lsgm plan would have said for this run on these GPUs
    most, least = estimate.hours(total)
    published = spec["hours"] * spec["gpus"]
    return {**{k: v for k, v in spec.items() if k != "vae"}, "vae": spec["vae"], "steps": steps,
            "flops_per_step_per_gpu": flops, "total_flops": total, "published_gpu_hours": published,
            "implied_utilisation": total / (published * 3600 * estimate.peak), "peak_tflops": estimate.peak / 1e12,
            "estimate": estimate.label, "estimate_gpu_hours": [least, most],
            "published_over_estimate": [published / least, published / most]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper_flops.json"))
    p.add_argument("--runs", nargs="+", default=None, help="only these run stems (default: every paper training run)")
    p.add_argument("--check-only", action="store_true",
                   help="recount only the published check and write it into the existing --out file")
    args = p.parse_args(argv)
    from lsgm.config import RunConfig, from_dict
    from lsgm.io import atomic_write_json, provenance

    started = time.time()
    if args.check_only:
        doc = json.loads(Path(args.out).read_text(encoding="utf-8"))
        doc["published_check"] = published_check()
        doc["published_check"]["provenance"] = provenance(torch.device("cpu"), wall_seconds=time.time() - started)
        atomic_write_json(args.out, doc)
        print(json.dumps({k: v for k, v in doc["published_check"].items() if k not in ("vae", "provenance")}, indent=1))
        return 0
    plan = Plan(yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8")), "paper")
    runs, by_fingerprint = {}, {}
    for run in plan.training_runs():
        if args.runs and run.stem not in args.runs:
            continue
        cfg = from_dict(RunConfig, run.config)
        batch = run.config["train"]["max_batch_per_process"] or run.batch_split[0]
        key = flop_fingerprint(run.config)
        if key not in by_fingerprint:  # the Table 6 cells share networks; each distinct one is counted once
            t0 = time.time()
            (flops_one, act_one), (flops_many, act_many) = (count_step(cfg, run.kind, b, run.config["train"]["steps"])
                                                            for b in (1, batch))
            step = linear({1: flops_one, batch: flops_many}.__getitem__, batch)
            task = _task(cfg, run.kind, MetaRun(1))
            params = {name: _n(m) for name, m in task.modules.items()}
            trainable = sum(_n(m) for name, m in task.modules.items()
                            if name != "vae" or run.kind == "vae" or cfg.objective.train_vae)
            by_fingerprint[key] = {
                "counted_at_batch": batch, "train_step_flops": step,
                "activation_bytes": {"fixed": act_one - (act_many - act_one) / max(1, batch - 1),
                                     "per_sample": (act_many - act_one) / max(1, batch - 1)},
                "parameters": params, "trainable_parameters": trainable,
                "ema_parameters": params.get("score", 0) if run.kind in ("lsgm", "sgm") else 0,
                "eval_flops_per_image": count_eval(cfg, run.kind), "count_seconds": time.time() - t0}
            print(f"{run.stem:48s} {step['per_sample'] * batch / 1e12:9.3f} TFLOP/step/process at batch {batch}"
                  f" ({time.time() - t0:.0f} s)", flush=True)
        runs[run.stem] = {"fingerprint": key, "kind": run.kind, "recipe": run.official or run.name, **by_fingerprint[key]}
    check = published_check()
    doc = {
        "benchmark": "paper_flops",
        "counted": "matrix-multiply and convolution FLOPs (torch.utils.flop_counter.FlopCounterMode, 2 per multiply-add) "
                   "of the trainers' own train_step and of single network evaluations, on meta tensors (no compute); "
                   "element-wise work, normalisation and memory traffic are not FLOPs here",
        "memory": "bytes of the distinct tensors autograd saves for backward at the meta pass's dtype (fp32): an "
                  "estimate of activation memory; parameters, gradients, optimizer states and EMA are added by lsgm plan",
        "inception_flops_per_image": inception_flops(),
        "published_check": check,
        "runs": runs,
        "provenance": provenance(torch.device("cpu"), wall_seconds=time.time() - started),
    }
    atomic_write_json(args.out, doc)
    print(f"wrote {args.out} ({len(runs)} runs, {len(by_fingerprint)} distinct networks, {time.time() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
