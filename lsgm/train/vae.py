"""Stage 1: the NVAE backbone with a N(0, I) prior (official ``train_vae.py``, reference section 4.1).

loss = mean_B[ recon + kl_coeff * sum_g c_g KL_g ] + sr_lambda_vae * vae.regularization()

with the KL warm-up ``kl_coeff(step)`` and KL balancing c_g (only while kl_coeff < 1) of
:mod:`lsgm.diffusion.objectives`, Adamax with coupled L2 weight decay (``train.vae_optim``), no EMA. At the end
the NELBO (kl_coeff = 1) on ``train.val_batches`` test batches is written to run.json; the IW-NLL is the
evaluation module's job. With ``train.select_every_steps`` (the official recipes: 40 evaluations), the weights
with the best ``select_iw_samples``-sample validation bound are kept (official ``train_vae.py``: it saves
``checkpoint.pt`` only when ``valid_neg_log_p`` improves, and stage 2 loads that file).
Usage: ``lsgm train-vae --config RUN.yaml --out DIR [--ckpt-dir DIR] [--dry-run]``.
"""

from __future__ import annotations

import argparse

import torch

from lsgm.config import ConfigError
from lsgm.data import dataset_info, get_dataset
from lsgm.diffusion.likelihood import iw_nll, nats_to_bpd
from lsgm.diffusion.objectives import balanced_kl, kl_balance_alphas, nelbo_terms
from lsgm.gaussian import normal_cross_entropy
from lsgm.train.cli import cli_main
from lsgm.train.distributed import unwrap
from lsgm.train.loop import mean_stats
from lsgm.train.optim import make_optimizer, set_lr, trainable
from lsgm.train.rng import fixed_rng
from lsgm.train.checkpoint import load_stage1
from lsgm.train.loader import fixed_batches
from lsgm.train.run import Run
from lsgm.train.schedules import lr_at, stage1_kl_coeff, stage2_kl_coeff


class VAETask:
    def __init__(self, run: Run, backbone: str | None = None):
        from lsgm.nets.nvae import NVAE

        cfg = run.cfg
        self.run, self.cfg = run, cfg
        self.info = dataset_info(cfg.data.name)
        vae = NVAE(cfg.vae, self.info)
        stage1 = self._continued(vae, backbone)
        self.vae = run.wrap(vae)
        self.opt = make_optimizer(trainable(unwrap(self.vae)), cfg.train.vae_optim)
        self.loader = run.make_loader(get_dataset(cfg.data.name, "train", root=cfg.data.root,
                                                  download=cfg.data.download, expected_size=cfg.data.n_train))
        self.alphas = kl_balance_alphas(cfg.vae.num_latent_scales, cfg.vae.num_groups_per_scale)
        self.modules, self.optimizers, self.emas = {"vae": unwrap(self.vae)}, {"vae": self.opt}, {}
        self.meta = {"stage": "vae", "optimizer": {"vae": f"{cfg.train.vae_optim.name} (coupled L2 weight decay"
                                                          " for adamax/adam, decoupled for adamw)"},
                     "deviations": ["lr cosine stepped per step, not per epoch"]}
        if not cfg.train.select_every_steps:
            self.meta["deviations"].append("no checkpoint selection by validation NLL: the last weights are saved")
        if stage1 is not None:
            self.meta["continues"] = {"path": str(backbone), "step": stage1["step"],
                                      "kl_schedule": "stage 2 (train.kl.continue_anneal)"}

    def _continued(self, vae, backbone: str | None) -> dict | None:
        """The control "backbone + stage-2 steps": load the backbone's weights (``train.continue_backbone``)."""
        if not self.cfg.train.continue_backbone:
            if backbone:
                raise ConfigError("--vae is for runs with train.continue_backbone: true (this run trains from scratch)")
            return None
        if not backbone:
            raise ConfigError("train.continue_backbone: true needs --vae BACKBONE/model.pt (the run it continues)")
        stage1 = load_stage1(backbone, self.cfg)
        vae.load_state_dict(stage1["state"]["vae"])
        return stage1

    def kl_coeff(self, step: int) -> float:
        """Stage 1's KL warm-up; a continued backbone follows stage 2's schedule, as the LSGM it is compared with."""
        if self.cfg.train.continue_backbone:
            return stage2_kl_coeff(step, self.run.total_steps, self.cfg.train.kl)
        return stage1_kl_coeff(step, self.run.total_steps, self.cfg.train.kl)

    def train_step(self, batches: list[torch.Tensor], step: int) -> dict[str, float]:
        run, cfg = self.run, self.cfg
        lr = lr_at(step, run.total_steps, cfg.train.vae_optim)
        set_lr(self.opt, lr)
        kl_coeff = self.kl_coeff(step)
        self.vae.train()
        params, stats = trainable(self.vae), []
        for i, (x, weight) in enumerate(run.micro_batches(batches, self.vae)):
            with run.autocast():
                out = self.vae(x)
                kl = balanced_kl([k.float() for k in out.kl_groups], kl_coeff, self.alphas, cfg.train.kl.balance)
                # SR depends on the weights only: added once per optimizer step, with the last micro-batch
                reg = unwrap(self.vae).regularization().float() if i == len(batches) - 1 else None
            recon = out.reconstruction.float()
            loss = weight * (recon + kl).mean() + (cfg.train.sr_lambda_vae * reg if reg is not None else 0.0)
            loss = run.force_nan(loss, step)
            kl_groups = torch.stack(out.kl_groups, 1).float()  # (B, G)
            nelbo = nelbo_terms(out, normal_cross_entropy(out.z0), dtype=torch.float32).nelbo.mean()
            run.check_finite(step, loss=loss)
            run.backward(loss, params)
            stats.append({"loss": (recon + kl).mean().item(), "nelbo": nelbo.item(), "recon": recon.mean().item(),
                          "kl": (nelbo - recon.mean()).item(), "kl_max_group": kl_groups.mean(0).max().item()})
        norms = run.step(step, {"vae": (self.opt, params)})
        out = mean_stats(stats)
        out["loss"] += cfg.train.sr_lambda_vae * reg.item()
        return {**out, "sr": reg.item(), "kl_coeff": kl_coeff, "lr": lr, **norms}

    @torch.no_grad()
    def _nelbos(self, samples: int, seed: int) -> torch.Tensor:
        """[K, N] NELBOs (nats, kl_coeff = 1, BN in eval mode) of the validation images, K encoder draws each."""
        vae = unwrap(self.vae).eval()
        per_batch = []
        with fixed_rng(seed, self.run.device):
            for x in fixed_batches(self.run, self.cfg.train.val_batches):
                draws = []
                for _ in range(samples):
                    out = vae(x)
                    draws.append(nelbo_terms(out, normal_cross_entropy(out.z0)).nelbo)
                per_batch.append(torch.stack(draws))
        return torch.cat(per_batch, dim=1).double()

    def selection_score(self) -> float:
        return float(iw_nll(self._nelbos(self.cfg.train.select_iw_samples, self.cfg.seed + 3)).mean())

    def selection_criterion(self) -> str:
        return (f"validation NLL bound (nats, {self.cfg.train.select_iw_samples} importance samples, "
                f"{self.cfg.train.val_batches} test batches), lower is better")

    def load_model_state(self, state: dict) -> None:
        unwrap(self.vae).load_state_dict(state["state"]["vae"])

    def validate(self) -> dict:
        nelbo = self._nelbos(1, self.cfg.seed + 1)[0]
        return {"split": "test", "n": nelbo.numel(), "nelbo_nats": nelbo.mean().item(),
                "nelbo_bpd": float(nats_to_bpd(nelbo.mean(), self.info.eval_dims)), "bn_mode": "eval",
                "unit": self.info.unit}

    def model_state(self) -> dict:
        return {"state": {"vae": unwrap(self.vae).state_dict()}, "ema": None}


def build(run: Run, args: argparse.Namespace) -> VAETask:
    return VAETask(run, getattr(args, "vae", None))


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, "vae", build, accepts_vae=True)
