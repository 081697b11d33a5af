"""The pixel-space score model baseline (the original SGM): NCSN++ on images, any SDE / weighting / t-sampling.

loss = mean_B sum w_p ||eps - eps_theta(x_t, t)||^2 with eps_theta = the network itself (no mixed score);
``train.score_optim``, EMA of the network. ``model.pt``: ``state.score`` (the score module's state_dict: NCSNpp, or
``NoiseConditioned(NCSNpp)`` with ``score.condition: log_sigma``), ``ema`` (the same with EMA parameters). Data enter
the network as ``2 x - 1`` (``data.centered``) or as ``x`` in [0, 1] (score_sde's VESDE recipe: VESDE, unweighted
denoising score matching, t ~ U[1e-5, 1], conditioning on log sigma_t).
Usage: ``lsgm train-sgm --config RUN.yaml --out DIR [--ckpt-dir DIR] [--dry-run]``.
"""

from __future__ import annotations

import argparse

import torch

from lsgm.config import ConfigError
from lsgm.data import dataset_info, get_dataset
from lsgm.diffusion.objectives import diffusion_terms
from lsgm.score import to_model_space
from lsgm.diffusion.sde import make_sde
from lsgm.diffusion.time_sampling import make_time_sampler
from lsgm.train.cli import cli_main
from lsgm.train.distributed import unwrap
from lsgm.train.loop import mean_stats
from lsgm.train.optim import make_optimizer, set_lr, trainable
from lsgm.train.rng import fixed_rng
from lsgm.train.run import Run
from lsgm.train.schedules import lr_at
from lsgm.train.ema import EMA
from lsgm.train.lsgm import DEVIATIONS
from lsgm.train.loader import fixed_batches


class SGMTask:
    def __init__(self, run: Run):
        from lsgm.score import build_score

        cfg = run.cfg
        self.run, self.cfg = run, cfg
        self.info = dataset_info(cfg.data.name)
        self.sde = make_sde(cfg.sde)
        try:
            self.sampler = make_time_sampler(cfg.objective.weighting, cfg.objective.sampling, self.sde, cfg.sde.t_eps)
        except ValueError as err:
            raise ConfigError(f"objective: {err}") from err
        image_shape = (self.info.channels, self.info.image_size, self.info.image_size)
        self.net = run.wrap(build_score(cfg, image_shape, self.sde))
        self.opt = make_optimizer(trainable(unwrap(self.net)), cfg.train.score_optim)
        self.ema = EMA(unwrap(self.net), cfg.train.ema_decay)
        self.loader = run.make_loader(get_dataset(cfg.data.name, "train", root=cfg.data.root,
                                                  download=cfg.data.download, expected_size=cfg.data.n_train))
        self.modules, self.optimizers, self.emas = {"score": unwrap(self.net)}, {"score": self.opt}, {"score": self.ema}
        self.meta = {"stage": "sgm", "data_space": "2x - 1 in [-1, 1]" if cfg.data.centered else "x in [0, 1]", "sampler": self.sampler.name,
                     "optimizer": {"score": cfg.train.score_optim.name},
                     "deviations": [d for d in DEVIATIONS if d.startswith(("time sampling", "learning rate", "mixed"))]}

    def train_step(self, batches: list[torch.Tensor], step: int) -> dict[str, float]:
        run = self.run
        lr = lr_at(step, run.total_steps, self.cfg.train.score_optim)
        set_lr(self.opt, lr)
        self.net.train()
        params, stats = trainable(self.net), []
        for x, weight in run.micro_batches(batches, self.net):
            with run.autocast():
                ts = self.sampler.sample(x.shape[0], device=x.device)
                terms = diffusion_terms(to_model_space(x, self.cfg.data.centered), self.net, self.sde, ts)
                loss = run.force_nan(terms.sgm_loss.float().mean(), step)
            run.check_finite(step, loss=loss)
            run.backward(weight * loss, params)
            # nelbo: the DSM bound on -log p(2x - 1) in nats (continuous density; no dequantization term)
            stats.append({"loss": loss.item(), "nelbo": terms.cross_entropy.float().mean().item()})
        norms = run.step(step, {"score": (self.opt, params)})
        self.ema.update(unwrap(self.net))
        return {**mean_stats(stats), "lr": lr, **norms}

    @torch.no_grad()
    def validate(self) -> dict:
        net = unwrap(self.net).eval()
        losses = []
        with fixed_rng(self.cfg.seed + 1, self.run.device), self.ema.swapped(net):
            for x in fixed_batches(self.run, self.cfg.train.val_batches):
                ts = self.sampler.sample(x.shape[0], device=x.device)
                losses.append(diffusion_terms(to_model_space(x, self.cfg.data.centered), net, self.sde, ts).sgm_loss)
        loss = torch.cat(losses).double()
        return {"split": "test", "n": loss.numel(), "sgm_loss": loss.mean().item(), "ema": True}

    def model_state(self) -> dict:
        net = unwrap(self.net)
        return {"state": {"score": net.state_dict()}, "ema": self.ema.averaged_state_dict(net)}


def build(run: Run, args: argparse.Namespace) -> SGMTask:
    return SGMTask(run)


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, "sgm", build)
