"""One optimizer step of the pixel score network through ``lsgm.train.run.Run`` (micro-batches, backward with
gradient routing, DDP all-reduce, clipping, step) on this process's share of a fixed batch of 8 samples.

Run plainly (one process) or under torchrun (any nodes x processes); ``max_batch_per_process`` > 0 forces gradient
accumulation. Rank 0 saves the updated parameters and the gradient norm to ``OUT/world{W}-cap{C}.pt``.
Used by tests/test_train.py (the GroupNorm score network has no batch statistics, so every split of the
batch must give the same step as one process on the whole batch). Then a train-mode NVAE forward per micro-batch
through ``Run.wrap``: under DDP its BatchNorm is SyncBatchNorm, so 2 processes give the whole batch's statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def score_step(out: str, cap: int) -> None:
    from lsgm.config import RunConfig, from_dict
    from lsgm.nets.ncsnpp import NCSNpp
    from lsgm.diffusion.objectives import diffusion_terms
    from lsgm.diffusion.sde import make_sde
    from lsgm.diffusion.time_sampling import make_time_sampler
    from lsgm.train.distributed import unwrap
    from lsgm.train.optim import trainable
    from lsgm.train.run import Run

    torch.set_num_threads(1)
    cfg = from_dict(RunConfig, {"kind": "sgm", "score": {"nf": 16}, "vae": {"num_channels": 8},
                                "train": {"grad_clip": 0.5, "global_batch": 8, "max_batch_per_process": cap}})
    run = Run(cfg, Path(out) / f"run-{run_tag(cap)}")
    rank, world = run.dist.rank, run.dist.world_size
    torch.manual_seed(0)
    net = run.wrap(NCSNpp(cfg.score, 1, 8))  # DDP broadcasts rank 0's weights
    sde = make_sde(cfg.sde)
    g = torch.Generator().manual_seed(1)
    x, noise = torch.rand(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    ts = make_time_sampler("ll", "uniform", sde, cfg.sde.t_eps).sample(8, generator=g)
    share = torch.arange(8)[rank * 8 // world:(rank + 1) * 8 // world]
    chunks = list(share.split(run.per_process_batch))
    assert len(chunks) == run.grad_accum
    params = trainable(net)
    opt = torch.optim.SGD(params, lr=0.1)  # SGD: the update is proportional to the averaged gradient
    for idx, weight in run.micro_batches(chunks, net):
        part = type(ts)(ts.t[idx], ts.weight_p[idx], ts.weight_q[idx], ts.t_eps)
        loss = diffusion_terms(2 * x[idx] - 1, net, sde, part, noise=noise[idx]).sgm_loss.mean()
        run.backward(weight * loss, params)
    norms = run.step(0, {"score": (opt, params)})
    vae = vae_forward(run, cfg, chunks)
    if rank == 0:
        torch.save({"params": unwrap(net).state_dict(), "norms": norms, "world": world,
                    "accum": run.grad_accum, "meta": run.training_meta(), **vae},
                   Path(out) / f"world{world}-cap{cap}.pt")
    run.close()


def vae_forward(run, cfg, chunks: list[torch.Tensor]) -> dict:
    """The NVAE through ``run.wrap`` (SyncBatchNorm + DDP under torchrun): one train-mode forward per micro-batch
    of this process's share of a fixed batch of 8 digits-sized images. Returns the BatchNorm layer types, the
    state_dict keys and the running statistics of the encoder-tower BatchNorm layers (``pre``, ``enc_groups``,
    ``enc_down``: they see x only, not the sampled latents, so they are independent of each process's noise)."""
    from lsgm.data import dataset_info
    from lsgm.nets.nvae import NVAE
    from lsgm.train.distributed import unwrap

    info = dataset_info(cfg.data.name)
    torch.manual_seed(0)
    vae = run.wrap(NVAE(cfg.vae, info)).train()
    x = torch.rand(8, info.channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for idx in chunks:
            vae(x[idx], generator=torch.Generator().manual_seed(3))
    bare = unwrap(vae)
    encoder = ("pre.", "enc_groups.", "enc_down.")
    return {"vae_bn_types": sorted({type(m).__name__ for m in bare.modules() if "BatchNorm" in type(m).__name__}),
            "vae_keys": list(bare.state_dict()),
            "vae_encoder_bn": {k: v for k, v in bare.state_dict().items()
                               if k.startswith(encoder) and k.endswith(("running_mean", "running_var"))}}


def run_tag(cap: int) -> str:
    import os

    return f"{os.environ.get('WORLD_SIZE', '1')}-{cap}-{os.environ.get('RANK', '0')}"


if __name__ == "__main__":
    score_step(sys.argv[1], int(sys.argv[2]))
