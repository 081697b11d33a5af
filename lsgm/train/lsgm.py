"""Stage 2: the LSGM, a score prior on the stage-1 VAE's top latent (official ``train_vada.py``, reference 3.5/4.2).

Usage: ``lsgm train-lsgm --config RUN.yaml --vae VAE_DIR/model.pt --out DIR [--ckpt-dir DIR] [--dry-run]``.

Models: the stage-1 NVAE (its config must equal ``cfg.vae``) and ``MixedScore(NCSNpp)`` on
``vae.latent_shape`` (``objective.mixed_score = False``: the network output is eps, alpha fixed at 1).
Optimizers: VAE ``train.vae_optim`` and score ``train.score_optim``, each with its own lr schedule; the
official code uses apex FusedAdam, whose default ``adam_w_mode`` is decoupled weight decay, i.e. AdamW
(with torch Adam as a fallback it silently becomes coupled L2; reference 4.2): set ``name: adamw`` to match
the authors' runs. EMA covers the score network only.

Per step, with the p-sampler ``make_time_sampler(weighting, sampling)`` and the q weights from
``q_objective`` ("rew": the p-samples' ``weight_q``; "ll_is"/"ll_uniform": an own likelihood sampler):

    q_loss = mean_B[ recon + kl_coeff (log q(z0|x) + log q(z_lower) + CE(z0) + CE_lower) ] + SR terms
    p_loss = mean_B[ sum w_p ||eps - eps_theta||^2 ] (+ lambda_score * GroupNorm max|gamma|)

* joint, q "rew": one t-batch and one score pass; q_loss -> VAE params, p_loss -> score params (gradient
  routing with ``torch.autograd.backward(inputs=...)``). When p and q coincide (weighting ``ll`` with q "rew")
  the score network is trained by the q_loss, as the official ``different_p_q_objectives`` does (its gradient is
  then scaled by kl_coeff during continued annealing).
* joint, q with its own sampler: the p and q halves are concatenated for one score pass, the p half's z0
  detached from the encoder.
* disjoint: a q pass (optionally with the EMA score, ``update_q_ema``) for the VAE, then a fresh t-batch and
  noise for a second score pass on the detached z0 for the score network.
* ``train_vae = False``: the VAE is frozen (eval mode) and only p_loss is minimised.
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from lsgm.config import ConfigError
from lsgm.data import dataset_info, get_dataset
from lsgm.diffusion.likelihood import nats_to_bpd
from lsgm.methods import q_trains_score
from lsgm.diffusion.objectives import diffusion_terms, nelbo_terms
from lsgm.diffusion.sde import make_sde
from lsgm.diffusion.time_sampling import TimeSample, make_q_sampler, make_time_sampler
from lsgm.train.cli import cli_main
from lsgm.train.distributed import unwrap
from lsgm.train.loop import mean_stats
from lsgm.train.optim import make_optimizer, set_lr, trainable
from lsgm.train.rng import fixed_rng
from lsgm.train.checkpoint import load_stage1
from lsgm.train.loader import first_batches, fixed_batches
from lsgm.train.run import Run
from lsgm.train.schedules import lr_at, stage2_kl_coeff
from lsgm.train.ema import EMA

DEVIATIONS = [
    "time sampling: r_un importance normaliser uses the exact exp(delta b^2) factor (official const_norm +0.23%)",
    "time sampling: uniform modes include the (1 - t_eps) factor of r(t) (official over-estimates CE by 1/(1-t_eps))",
    "cross entropy constant: exact terminal term CE(q(z_1|z_0) || N(0,I)) instead of the entropy D/2 log(2 pi e sigma_1^2)",
    "optimizers chosen explicitly from train.vae_optim / train.score_optim (official: apex FusedAdam = AdamW, "
    "decoupled weight decay; torch.optim.Adam fallback = coupled L2)",
    "learning rate: per-step cosine (official per epoch), warm-up lr * (step + 1) / warmup_steps",
    "drop_inactive_var: per-channel analytic KL of the top scale over train.val_batches batches (official: "
    "single-sample KL over <= 1000 batches); inactive channels get alpha = 0 exactly (official logit -15)",
    "mixed precision is a switch (train.amp); official always fp16 with GradScaler(2^10)",
]


class LSGMTask:
    def __init__(self, run: Run, vae_path: str):
        from lsgm.nets.nvae import NVAE, infer_active_channels
        from lsgm.score import build_score

        cfg, obj = run.cfg, run.cfg.objective
        self.run, self.cfg, self.obj = run, cfg, obj
        stage1 = load_stage1(vae_path, cfg)
        self.info = dataset_info(cfg.data.name)
        vae = NVAE(cfg.vae, self.info)
        vae.load_state_dict(stage1["state"]["vae"])
        self.sde = make_sde(cfg.sde)
        try:
            self.p_sampler = make_time_sampler(obj.weighting, obj.sampling, self.sde, cfg.sde.t_eps)
            self.q_sampler = make_q_sampler(obj.q_objective, self.p_sampler)
        except ValueError as err:
            raise ConfigError(f"objective: {err}") from err
        score = build_score(cfg, vae.latent_shape, self.sde)
        self.active_kl = None
        if obj.drop_inactive_var:
            vae.to(run.device).eval()
            with fixed_rng(cfg.seed + 2, run.device):
                train_set = get_dataset(cfg.data.name, "train", root=cfg.data.root, download=cfg.data.download,
                                        expected_size=cfg.data.n_train)
                batches = first_batches(train_set, run.per_process_batch, cfg.train.val_batches, run.device)
                mask, self.active_kl = infer_active_channels(vae, batches)
            score.set_active(mask)
        self.train_vae = obj.train_vae
        self.vae = run.wrap(vae) if self.train_vae else vae.to(run.device).eval().requires_grad_(False)
        self.score = run.wrap(score)
        self.opt_score = make_optimizer(trainable(unwrap(self.score)), cfg.train.score_optim)
        self.optimizers = {"score": self.opt_score}
        if self.train_vae:
            self.opt_vae = make_optimizer(trainable(unwrap(self.vae)), cfg.train.vae_optim)
            self.optimizers["vae"] = self.opt_vae
        self.ema = EMA(unwrap(self.score), cfg.train.ema_decay)
        self.modules = {"vae": unwrap(self.vae), "score": unwrap(self.score)}
        self.emas = {"score": self.ema}
        self.loader = run.make_loader(get_dataset(cfg.data.name, "train", root=cfg.data.root,
                                                  download=cfg.data.download, expected_size=cfg.data.n_train))
        self.score_by_q = self.train_vae and q_trains_score(obj.weighting, obj.q_objective)
        self.meta = self._meta(vae_path, stage1)

    def _meta(self, vae_path: str, stage1: dict) -> dict:
        t = self.cfg.train
        selected = stage1.get("meta", {}).get("selection", {}).get("selected_step")
        return {"stage": "lsgm", "vae_checkpoint": {"path": str(vae_path), "step": stage1["step"],
                                                    "selected_step": selected},
                "latent_shape": list(unwrap(self.vae).latent_shape),
                "optimizer": {"vae": t.vae_optim.name if self.train_vae else None, "score": t.score_optim.name,
                              "official": "apex FusedAdam (adam_w_mode=True: decoupled weight decay = AdamW)"},
                "score_trained_by": "q_loss" if self.score_by_q else "p_loss",
                "samplers": {"p": self.p_sampler.name, "q": self.q_sampler.name if self.q_sampler else "rew"},
                "active_channels": None if self.active_kl is None else {
                    "kl": self.active_kl.tolist(), "active": unwrap(self.score).active.tolist()},
                "deviations": DEVIATIONS}

    # --------------------------------------------------------------------------------- one step
    def _set_schedules(self, step: int) -> dict[str, float]:
        total, t = self.run.total_steps, self.cfg.train
        sched = {"lr_score": lr_at(step, total, t.score_optim), "kl_coeff": stage2_kl_coeff(step, total, t.kl)}
        set_lr(self.opt_score, sched["lr_score"])
        if self.train_vae:
            sched["lr"] = lr_at(step, total, t.vae_optim)
            set_lr(self.opt_vae, sched["lr"])
        else:
            sched["lr"] = sched["lr_score"]
        return sched

    def _score_terms(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross entropy for q [B], sgm loss for p [B]) from one score pass (joint or frozen-VAE mode)."""
        B, kw = z0.shape[0], dict(device=z0.device, dtype=torch.float32)
        ts_p = self.p_sampler.sample(B, **kw)
        if self.q_sampler is None or not self.train_vae:
            z_in = z0 if self.train_vae else z0.detach()
            terms = diffusion_terms(z_in, self.score, self.sde, ts_p)
            return terms.cross_entropy, terms.sgm_loss
        ts_q = self.q_sampler.sample(B, **kw)
        ts = TimeSample(torch.cat([ts_q.t, ts_p.t]), torch.cat([ts_q.weight_p, ts_p.weight_p]),
                        torch.cat([ts_q.weight_q, ts_p.weight_q]), ts_p.t_eps)
        terms = diffusion_terms(torch.cat([z0, z0.detach()]), self.score, self.sde, ts)  # (2B, ...): q half, p half
        return terms.cross_entropy[:B], terms.sgm_loss[B:]

    def _score_sr(self) -> torch.Tensor | float:
        """lambda_score * the score network's SR: spectral norms of its conv layers (``train.sr_score_conv``, the
        official default without --custom_conv_dae) + GroupNorm max|gamma|. Once per optimizer step."""
        lam = self.cfg.train.sr_lambda_score
        if lam <= 0:
            return 0.0
        return lam * unwrap(self.score).regularization(conv=self.cfg.train.sr_score_conv).float()

    def _q_loss(self, out, ce: torch.Tensor, kl_coeff: float, weight: float, regularize: bool):
        """(loss to back-propagate, q objective of this micro-batch, its NELBO). ``weight`` = 1 / grad_accum; the
        SR terms (weights only) join once per step (``regularize``), the score's only when q trains the score."""
        terms = nelbo_terms(out, ce, dtype=torch.float32)
        nelbo = terms.nelbo.mean()
        data = terms.objective(kl_coeff).mean()
        loss = weight * data
        if regularize and self.train_vae:
            loss = loss + self.cfg.train.sr_lambda_vae * unwrap(self.vae).regularization().float()
        if regularize and self.score_by_q:
            loss = loss + self._score_sr()
        return loss, data, nelbo

    def _p_loss(self, sgm: torch.Tensor, weight: float, regularize: bool):
        """(loss to back-propagate, score objective (9) of this micro-batch); the score's SR joins here unless the
        q objective trains the score (then p_loss is only reported)."""
        data = sgm.float().mean()
        return weight * data + (self._score_sr() if regularize and not self.score_by_q else 0.0), data

    def train_step(self, batches: list[torch.Tensor], step: int) -> dict[str, float]:
        run, sched = self.run, self._set_schedules(step)
        vae_params, score_params = trainable(self.vae), trainable(self.score)
        if self.train_vae:
            self.vae.train()
        self.score.train()
        stats, last = [], len(batches) - 1
        for i, (x, weight) in enumerate(run.micro_batches(batches, self.vae, self.score)):
            step_fn = self._disjoint if self.obj.mode == "disjoint" else self._joint
            q_data, p_data, nelbo = step_fn(x, step, sched["kl_coeff"], vae_params, score_params, weight, i == last)
            stats.append({"q_loss": q_data.item(), "p_loss": p_data.item(), "nelbo": nelbo.item()})
        groups = {"score": (self.opt_score, score_params)}
        if self.train_vae:
            groups = {"vae": (self.opt_vae, vae_params), **groups}
        norms = run.step(step, groups)
        self.ema.update(unwrap(self.score))
        alpha = unwrap(self.score).alpha.mean().item() if self.obj.mixed_score else 1.0
        out = mean_stats(stats)
        out["loss"] = out["q_loss"] if self.train_vae else out["p_loss"]
        return {**out, **sched, **norms, "alpha_mean": alpha}

    def _joint(self, x, step, kl_coeff, vae_params, score_params, weight, regularize):
        """Joint mode (and frozen VAE): one VAE pass, one score pass (p and q halves when q has its own t)."""
        run = self.run
        with run.autocast(), (contextlib.nullcontext() if self.train_vae else torch.no_grad()):
            out = self.vae(x)
        with run.autocast():
            ce, sgm = self._score_terms(out.z0)
            q_loss, q_data, nelbo = self._q_loss(out, ce, kl_coeff, weight, regularize)
            p_loss, p_data = self._p_loss(sgm, weight, regularize)
        q_loss, p_loss = run.force_nan(q_loss, step), run.force_nan(p_loss, step)
        run.check_finite(step, q_loss=q_loss, p_loss=p_loss)
        if self.score_by_q:
            run.backward(q_loss, vae_params + score_params)
        elif self.train_vae:
            run.backward(q_loss, vae_params, retain_graph=True)
            run.backward(p_loss, score_params)
        else:
            run.backward(p_loss, score_params)
        return q_data, p_data, nelbo

    def _disjoint(self, x, step, kl_coeff, vae_params, score_params, weight, regularize):
        """Disjoint mode: q pass (EMA score if update_q_ema) -> VAE grads; fresh t-batch on detached z0 -> score."""
        run, net = self.run, unwrap(self.score)
        with run.autocast():
            out = self.vae(x)
        swap = self.ema.swapped(net) if self.obj.update_q_ema else contextlib.nullcontext()
        with swap:  # the q backward runs inside: the graph holds the (swapped) parameter tensors
            with run.autocast():
                ts_q = self.q_sampler.sample(x.shape[0], device=x.device)
                ce = diffusion_terms(out.z0, net, self.sde, ts_q).cross_entropy
                q_loss, q_data, nelbo = self._q_loss(out, ce, kl_coeff, weight, regularize)
            q_loss = run.force_nan(q_loss, step)
            run.check_finite(step, q_loss=q_loss)
            run.backward(q_loss, vae_params)
        with run.autocast():
            ts_p = self.p_sampler.sample(x.shape[0], device=x.device)
            sgm = diffusion_terms(out.z0.detach(), self.score, self.sde, ts_p).sgm_loss
            p_loss, p_data = self._p_loss(sgm, weight, regularize)
        run.check_finite(step, p_loss=p_loss)
        run.backward(p_loss, score_params)
        return q_data, p_data, nelbo

    # --------------------------------------------------------------------------------- end of run
    @torch.no_grad()
    def validate(self) -> dict:
        """NELBO with the EMA score prior on test batches (Theorem 1 CE with r_ll importance sampling)."""
        vae, net = unwrap(self.vae).eval(), unwrap(self.score).eval()
        sampler = make_time_sampler("ll", "is", self.sde, self.cfg.sde.t_eps)
        nelbos = []
        with fixed_rng(self.cfg.seed + 1, self.run.device), self.ema.swapped(net):
            for x in fixed_batches(self.run, self.cfg.train.val_batches):
                out = vae(x)
                ts = sampler.sample(x.shape[0], device=x.device)
                ce = diffusion_terms(out.z0, net, self.sde, ts).cross_entropy
                nelbos.append(nelbo_terms(out, ce).nelbo)
        nelbo = torch.cat(nelbos).double()
        return {"split": "test", "n": nelbo.numel(), "nelbo_nats": nelbo.mean().item(),
                "nelbo_bpd": float(nats_to_bpd(nelbo.mean(), self.info.eval_dims)), "unit": self.info.unit,
                "prior": "dsm, r_ll importance sampling, one t per sample", "ema": True, "bn_mode": "eval"}

    def model_state(self) -> dict:
        """``state``: vae + score (MixedScore) state_dicts; ``ema``: the score's state_dict with EMA parameters."""
        net = unwrap(self.score)
        return {"state": {"vae": unwrap(self.vae).state_dict(), "score": net.state_dict()},
                "ema": self.ema.averaged_state_dict(net)}


def build(run: Run, args: argparse.Namespace) -> LSGMTask:
    return LSGMTask(run, args.vae)


def main(argv: list[str] | None = None) -> int:
    return cli_main(argv, "lsgm", build, needs_vae=True)
