"""``lsgm evaluate samples``: a PNG grid of samples of one trained model (the paper's Figure 5) and its sidecar JSON.

The samples are drawn exactly as the FID/FD evaluation draws them (:func:`lsgm.eval.generate.sample_batch`:
per-sample seeded noise, the same samplers and settings): VAE ancestral samples from its Normal prior, LSGM
probability-flow ODE (or what the flags say) then the decoder, pixel SGM its ODE or PC sampler. Every image is a
decoder MEAN; for binary data that is the Bernoulli probabilities (grey levels, as the paper's Figure 5), never a
binarized draw. The data's ``crop`` border (MNIST/OMNIGLOT: 32 -> 28, pixels the likelihood does not model) is
removed. The grid is ``torchvision.utils.save_image`` (``make_grid``: ``nrow`` per row, ``PADDING`` pixels, uint8 by
round(255 x)), written atomically. The sidecar (``--out`` with suffix ``.json``) is a metrics record
(docs/ARCHITECTURE.md "Metrics files", ``kind = samples``): run, status, settings, checkpoint (path, EMA, step),
provenance, and the grid's geometry under ``image``.

A diverged run (or one whose samples are not finite) gets a placeholder PNG of the grid's size saying
"diverged", status ``diverged`` with the reason, and exit 0: the DAG goes on.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lsgm.eval.common import (
    SEED_RULE,
    EvalError,
    LoadedRun,
    evaluation_seed,
    load_run,
    metrics_record,
    resolve_device,
    set_bn_mode,
    write_metrics,
)
from lsgm.eval.generate import Sampling, make_sampling, sample_batch, sampling_settings
from lsgm.io import atomic_write

PADDING = 2  # make_grid's default: pixels between and around the samples
PAD_VALUE = 0.0  # make_grid's default (black)
PLACEHOLDER_GREY = 96


def sidecar_path(out: str | Path) -> Path:
    """The sidecar JSON of a grid PNG: the same name with suffix ``.json``."""
    return Path(out).with_suffix(".json")


def grid_size(n: int, nrow: int, image_size: int, padding: int = PADDING) -> tuple[int, int]:
    """(width, height) in pixels of make_grid's grid of ``n`` square images, ``nrow`` per row."""
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    return cols * (image_size + padding) + padding, rows * (image_size + padding) + padding


def draw_samples(run: LoadedRun, n: int, batch_size: int, *, seed: int, sampling: Sampling,
                 device: torch.device) -> tuple[torch.Tensor, list[int], float]:
    """Samples 0 .. n - 1 of ``seed`` [n, C, H, W] in [0, 1] (CPU; the data's ``crop`` border removed, the pixels
    the likelihood does not model), the NFE of each batch and the sampling seconds."""
    images, nfes, seconds, c = [], [], 0.0, run.data.crop
    for start in range(0, n, batch_size):
        batch = sample_batch(run, start, min(batch_size, n - start), seed=seed, sampling=sampling, device=device)
        if not torch.isfinite(batch.images).all():
            raise FloatingPointError(f"non-finite samples in batch starting at {start}")
        images.append(batch.images[..., c : batch.images.shape[-2] - c, c : batch.images.shape[-1] - c].cpu())
        nfes.append(batch.nfe)
        seconds += batch.seconds
    return torch.cat(images), nfes, seconds


def save_grid(images: torch.Tensor, out: Path, nrow: int) -> tuple[int, int]:
    """``images`` [n, C, H, W] in [0, 1] as one PNG grid (atomically); returns its (width, height)."""
    from torchvision.utils import make_grid, save_image

    grid = make_grid(images, nrow=nrow, padding=PADDING, pad_value=PAD_VALUE)
    atomic_write(out, lambda tmp: save_image(grid, tmp, format="PNG"))
    return grid.shape[2], grid.shape[1]


def save_placeholder(out: Path, size: tuple[int, int], text: str = "diverged") -> None:
    """A grey PNG of ``size`` (width, height) saying ``text`` (atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = size
    image = Image.new("RGB", (width, height), (PLACEHOLDER_GREY,) * 3)
    draw = ImageDraw.Draw(image)
    font_size = max(6, width // 6)
    while True:
        try:
            font = ImageFont.load_default(size=font_size)
        except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
            font = ImageFont.load_default()
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= width - 4 or font_size <= 6 or not hasattr(font, "size"):
            break
        font_size -= 2
    xy = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.text(xy, text, fill=(255, 255, 255), font=font)
    atomic_write(out, lambda tmp: image.save(tmp, format="PNG"))


def evaluate_samples(model: str, out: str, *, n: int, nrow: int, batch_size: int, tolerance: float, sampler: str,
                     pc_steps: int | None, snr: float, solver: str, temperature: float, vae_temperature: float,
                     seed: int, bn_mode: str, t_eps: float, use_ema: bool, device: str | None,
                     latent: str = "prior") -> dict:
    """Write the grid of ``n`` samples of ``model`` to ``out`` (PNG) and its sidecar JSON; return the sidecar
    record."""
    for name, value in (("--n", n), ("--nrow", nrow), ("--batch-size", batch_size)):
        if value < 1:
            raise EvalError(f"{name} must be at least 1, got {value}")
    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise EvalError(f"--out {out} must end in .png (its sidecar is {sidecar_path(out)})")
    dev = resolve_device(device)
    run = load_run(model, use_ema=use_ema, device=dev)
    sampling = make_sampling(run.kind, sampler=sampler, tolerance=tolerance, pc_steps=pc_steps, snr=snr,
                             solver=solver, t_eps=t_eps, temperature=temperature, vae_temperature=vae_temperature,
                             latent=latent)
    settings = {
        **sampling_settings(run.kind, sampling), "n": n, "nrow": nrow, "batch_size": batch_size,
        "bn_mode": bn_mode, "seed": seed,
        "eval_seed": evaluation_seed(seed, run.cfg.name, "fid_normal" if latent == "matched_normal" else "fid"),
        "seed_rule": SEED_RULE + "; a grid takes its FID's eval_seed: it shows the first n samples the FID measures",
        "seeding": "per-sample generator seeded by (eval_seed, sample index)",
        "decoder": "mean (Bernoulli probabilities, not binarized)" if run.data.binary else "mean",
        "quantization": "uint8 round(255 x) (torchvision save_image)", "padding": PADDING, "pad_value": PAD_VALUE,
        "crop": run.data.crop,
    }
    metrics = {"nfe_mean": math.nan, "sampling_seconds": math.nan, "pixel_min": math.nan, "pixel_max": math.nan,
               "pixel_mean": math.nan}
    side = run.data.image_size - 2 * run.data.crop
    size = grid_size(n, nrow, side)
    status = reason = None
    if run.diverged:
        save_placeholder(out, size)
    else:
        set_bn_mode(run.vae, bn_mode)
        try:
            images, nfes, seconds = draw_samples(run, n, batch_size, seed=settings["eval_seed"], sampling=sampling,
                                                 device=dev)
        except (FloatingPointError, AssertionError) as err:  # NaN samples / solver underflow: not a crash
            status, reason = "diverged", f"sampling failed: {err}"
            save_placeholder(out, size)
        else:
            size = save_grid(images, out, nrow)
            metrics.update(nfe_mean=sum(nfes) / len(nfes), sampling_seconds=seconds, pixel_min=images.min().item(),
                           pixel_max=images.max().item(), pixel_mean=images.mean().item())
    record = metrics_record("samples", run, metrics, settings, status=status, reason=reason, device=dev,
                            started=started)
    record["image"] = {"path": str(out), "width": size[0], "height": size[1], "cols": min(nrow, n),
                       "rows": math.ceil(n / min(nrow, n)), "image_size": side,
                       "channels": run.data.channels, "placeholder": record["status"] != "ok"}
    write_metrics(sidecar_path(out), record)
    return record
