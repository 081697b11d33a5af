"""Every paper-scale network, built from its RESOLVED run config (``lsgm.plan.Plan(config.yaml, "paper")``, the
object the Snakefile submits), has exactly the official parameter count, part by part.

The official totals are those of the NVlabs/LSGM networks built from the README commands (parser defaults for
the rest), counted by running the official model constructors outside this repository. Networks are built on
the ``meta`` device: no memory, no compute, a few seconds for ~2 billion parameters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lsgm.config import RunConfig, from_dict
from lsgm.data import DATASETS
from lsgm.nets.nvae import NVAE
from lsgm.plan import Plan
from lsgm.score import build_score
from lsgm.diffusion.sde import make_sde

ROOT = Path(__file__).resolve().parents[1]

# (dataset, paper run name) -> NVAE total, flows, input skip, score net incl. mixing logit, latent shape
OFFICIAL = {
    ("cifar10", "balanced"): (100_867_740, 0, 0, 375_561_064, (180, 16, 16)),
    ("cifar10", "fid"): (100_867_740, 0, 0, 375_561_064, (180, 16, 16)),
    ("cifar10", "nll"): (130_622_772, 2_062_080, 0, 375_561_064, (180, 16, 16)),
    ("celeba256", "celeba"): (51_296_572, 2_618_880, 369_792, 408_367_680, (160, 32, 32)),
    ("mnist", "mnist"): (3_005_822, 0, 0, 63_774_544, (40, 8, 8)),
    ("omniglot", "omniglot"): (5_384_190, 0, 0, 97_804_152, (60, 16, 16)),
}


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper() -> Plan:
    return Plan(yaml.safe_load((ROOT / "config.yaml").read_text()), "paper")


@pytest.mark.parametrize("dataset, name", sorted(OFFICIAL))
def test_paper_networks_have_the_official_parameter_counts(paper, dataset, name):
    nvae_total, flows, input_skip, score_total, latent = OFFICIAL[(dataset, name)]
    cfg = from_dict(RunConfig, paper.run("lsgm", dataset, name, 0).config)
    with torch.device("meta"):
        vae = NVAE(cfg.vae, DATASETS[cfg.data.name])
        score = build_score(cfg, vae.latent_shape, make_sde(cfg.sde))
    parts = {"flows": count(vae.flows), "input_skip": count(vae.input_skips)}
    assert parts == {"flows": flows, "input_skip": input_skip}
    assert count(vae) == nvae_total
    assert tuple(vae.latent_shape) == latent
    assert count(score) == score_total
