"""Training infrastructure: smoke runs of the three trainers, exact resume after SIGKILL, DDP = big batch,
divergence as an outcome, config errors, dry run; plus the schedules, EMA and the resumable data order.

Everything runs on CPU at tiny sizes on the offline digits data.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lsgm.config import KLConfig, OptimConfig
from lsgm.diffusion.objectives import balanced_kl, kl_balance_alphas
from lsgm.train.ema import EMA
from lsgm.train.loader import InfiniteLoader
from lsgm.train.loop import EXIT_PREEMPTED
from lsgm.train.schedules import kl_coeff_at, lr_at, stage1_kl_coeff, stage2_kl_coeff

ROOT = Path(__file__).resolve().parent.parent
TINY = {"vae": {"num_channels": 8}, "score": {"nf": 16},
        "train": {"global_batch": 8, "log_every": 2, "val_batches": 1, "checkpoint_every_steps": 4}}
STAGE2_OPTIM = {"vae_optim": {"name": "adamw", "lr": 1e-4, "lr_min": 1e-5, "eps": 1e-3}}


def write_config(path: Path, kind: str, **sections) -> Path:
    cfg = {"kind": kind, "name": f"test-{kind}", "seed": 3, **{k: dict(v) for k, v in TINY.items()}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*argv: str) -> int:
    from lsgm.cli import main
    return main(list(argv))


def assert_run_dir(out: Path, status: str = "completed") -> dict:
    for name in ("config.yaml", "stats.jsonl", "run.json", "model.pt"):
        assert (out / name).exists(), name
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == status
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["status"] == status and model["step"] == info["step"]
    assert set(model) >= {"config", "status", "step", "state", "ema", "provenance"}
    return info


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny nets: one intra-op thread is fastest and stays fast when other jobs share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae_model(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vae")
    cfg = write_config(tmp / "vae.yaml", "vae", train={"steps": 8})
    assert run_cli("train-vae", "--config", str(cfg), "--out", str(tmp / "run")) == 0
    return tmp / "run" / "model.pt"


# ------------------------------------------------------------------------------------------ (a) smoke
def test_smoke_vae(vae_model):
    info = assert_run_dir(vae_model.parent)
    assert info["step"] == 8 and math.isfinite(info["validation"]["nelbo_nats"])
    lines = [json.loads(s) for s in (vae_model.parent / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in lines] == [2, 4, 6, 8]
    assert {"loss", "nelbo", "kl_coeff", "lr", "grad_norm", "seconds"} <= set(lines[0])


@pytest.mark.parametrize("objective", [{}, {"weighting": "un", "q_objective": "ll_is"},
                                       {"weighting": "re", "sampling": "is", "q_objective": "ll_uniform",
                                        "mode": "disjoint", "update_q_ema": True},
                                       {"train_vae": False, "drop_inactive_var": True}])
def test_smoke_lsgm(vae_model, tmp_path, objective):
    train = {"steps": 4, **STAGE2_OPTIM, "sr_lambda_score": 1e-2}  # with the score network's conv SR (item 3)
    cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", train=train, objective=objective)
    assert run_cli("train-lsgm", "--config", str(cfg), "--vae", str(vae_model), "--out", str(tmp_path / "run")) == 0
    info = assert_run_dir(tmp_path / "run")
    assert len(info["deviations"]) >= 3 and info["training"]["amp"]["effective"] == "off"
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert set(model["state"]) == {"vae", "score"} and "mixing_logit" in model["ema"]
    assert int(model["state"]["score"]["backbone.sr_counter.calls"]) == 4  # one SR per optimizer step
    assert (info["training"]["global_batch"], info["training"]["grad_accum"], info["training"]["world_size"]) == (8, 1, 1)


def test_accumulated_lsgm_step_records_its_split(vae_model, tmp_path):
    train = {"steps": 2, **STAGE2_OPTIM, "max_batch_per_process": 4}
    cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", train=train)
    assert run_cli("train-lsgm", "--config", str(cfg), "--vae", str(vae_model), "--out", str(tmp_path / "run")) == 0
    info = assert_run_dir(tmp_path / "run")
    t = info["training"]
    assert (t["global_batch"], t["per_process_batch"], t["grad_accum"], t["world_size"]) == (8, 4, 2, 1)
    assert any(d.startswith("launch: global batch 8 = 1 processes x 4 x 2") for d in info["deviations"])


def test_smoke_sgm(tmp_path):
    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 4})
    assert run_cli("train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")) == 0
    assert_run_dir(tmp_path / "run")


VE_PIXEL = {"sde": {"type": "vesde", "sigma_min": 0.01, "sigma_max": 8.0, "t_eps": 1e-5},
            "objective": {"weighting": "un", "sampling": "uniform", "mixed_score": False},
            "score": {"nf": 16, "embedding_type": "fourier", "embedding_scale": 16.0, "condition": "log_sigma"},
            "data": {"centered": False}}


def test_smoke_sgm_vesde_trains_and_samples_with_pc_and_ode(tmp_path):
    """score_sde's family: VESDE, unweighted DSM, log sigma_t conditioning, data in [0, 1]; both samplers start from
    N(0, sigma_max^2 I) and return images in [0, 1]."""
    from lsgm.eval.common import load_run
    from lsgm.eval.generate import Sampling, sample_batch

    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 4}, **VE_PIXEL)
    assert run_cli("train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")) == 0
    info = assert_run_dir(tmp_path / "run")
    assert info["data_space"] == "x in [0, 1]" and info["sampler"] == "uniform"
    run = load_run(tmp_path / "run" / "model.pt")
    assert type(run.score).__name__ == "NoiseConditioned" and run.sde.prior_std == pytest.approx(8.0)
    common = {"solver": "dopri5", "t_eps": 1e-5, "temperature": 1.0, "vae_temperature": 1.0}
    for sampler, extra in (("pc", {"pc_steps": 3, "snr": 0.075, "tolerance": None}),
                           ("ode", {"tolerance": 1e-2, "pc_steps": None, "snr": None})):
        batch = sample_batch(run, 0, 3, seed=0, sampling=Sampling(sampler=sampler, **common, **extra), device="cpu")
        assert batch.images.shape == (3, 1, 8, 8) and torch.isfinite(batch.images).all()
        assert 0.0 <= float(batch.images.min()) and float(batch.images.max()) <= 1.0
        assert batch.nfe == (6 if sampler == "pc" else batch.nfe) and batch.nfe > 0


def test_stage2_rejects_a_mismatched_vae(vae_model, tmp_path, capsys):
    cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", train={"steps": 2}, vae={"num_channels": 12})
    assert run_cli("train-lsgm", "--config", str(cfg), "--vae", str(vae_model), "--out", str(tmp_path / "r")) == 2
    assert "vae.num_channels" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ (b) resume
def _subprocess(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lsgm", *argv], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _final(out: Path) -> tuple[dict, list[dict]]:
    model = torch.load(out / "model.pt", weights_only=True)
    stats = [json.loads(s) for s in (out / "stats.jsonl").read_text().splitlines()]
    for s in stats:
        s.pop("seconds"), s.pop("steps_per_second")
    return model, stats


def _assert_same_tensors(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")


def _kill_after_checkpoint_and_resume(args: list[str], tmp_path: Path) -> None:
    """Run ``args`` uninterrupted into tmp_path/ref and, side by side, into tmp_path/victim killed with SIGKILL as
    soon as its first resume checkpoint exists, then rerun the victim to completion."""
    ref = _subprocess([*args, "--out", str(tmp_path / "ref")])
    victim = _subprocess([*args, "--out", str(tmp_path / "victim")])
    ckpt = tmp_path / "victim" / ".ckpt" / "ckpt.pt"
    while not ckpt.exists() and victim.poll() is None:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "victim" / "run.json").exists()
    resumed = _subprocess([*args, "--out", str(tmp_path / "victim")])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()[-2000:]


def test_resume_after_sigkill_equals_uninterrupted(vae_model, tmp_path):
    """Stage 2 (two optimizers, EMA, KL continuation, warm-up): kill -9 after a checkpoint, rerun, compare."""
    cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", objective={"weighting": "un"},
                       train={"steps": 40, "checkpoint_every_steps": 6, "ema_decay": 0.9, **STAGE2_OPTIM,
                              "kl": {"continue_anneal": True}, "vae_optim": {**STAGE2_OPTIM["vae_optim"],
                                                                             "warmup_steps": 5}})
    _kill_after_checkpoint_and_resume(["train-lsgm", "--config", str(cfg), "--vae", str(vae_model)], tmp_path)
    (m_ref, s_ref), (m_res, s_res) = _final(tmp_path / "ref"), _final(tmp_path / "victim")
    _assert_same_tensors(m_ref["state"], m_res["state"], "state")
    _assert_same_tensors(m_ref["ema"], m_res["ema"], "ema")
    assert s_ref == s_res
    info = json.loads((tmp_path / "victim" / "run.json").read_text())
    assert info["status"] == "completed" and info["training"]["resumed_from_steps"][0] > 0


def test_sigterm_checkpoints_and_exits_for_retry(tmp_path):
    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 400, "checkpoint_every_steps": 0,
                                                            "checkpoint_every_minutes": 0.0})
    args = ["train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")]
    proc = _subprocess(args)
    stats = tmp_path / "run" / "stats.jsonl"
    while (not stats.exists() or not stats.read_text()) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == EXIT_PREEMPTED
    step = torch.load(tmp_path / "run" / ".ckpt" / "ckpt.pt", weights_only=True)["step"]
    assert 0 < step < 400 and not (tmp_path / "run" / "run.json").exists()


# ------------------------------------------------------------------------------------------ (c) DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_step(out: Path, cap: int = 0, nodes: int = 0) -> dict:
    """tests/ddp_step.py as its own process(es): plain python, or ``nodes`` torchrun "nodes" of one gloo process
    each on localhost meeting at a c10d rendezvous (as the multi-node paper runs do)."""
    script, env = str(ROOT / "tests" / "ddp_step.py"), {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if not nodes:
        subprocess.run([sys.executable, script, str(out), str(cap)], env=env, check=True, timeout=300)
        return torch.load(out / f"world1-cap{cap}.pt", weights_only=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc_per_node=1",
           "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=lsgm-test", script, str(out), str(cap)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(nodes)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    return torch.load(out / f"world{nodes}-cap{cap}.pt", weights_only=True)


def _assert_same_step(a: dict, b: dict) -> None:
    assert a["norms"]["grad_norm"] == pytest.approx(b["norms"]["grad_norm"], rel=1e-5)
    for k, v in b["params"].items():
        torch.testing.assert_close(a["params"][k], v, atol=1e-6, rtol=1e-5, msg=k)


def test_multinode_and_accumulated_steps_equal_one_process_on_the_whole_batch(tmp_path):
    """2 "nodes" x 1 gloo process (torchrun, c10d rendezvous), and 1 process with 2 accumulated micro-batches, take
    the same step as 1 process on the concatenated batch of 8, for the (GroupNorm, BN-free) score network.

    Under DDP ``Run.wrap`` converts the NVAE's BatchNorm to SyncBatchNorm (state_dict keys unchanged), so the 2
    processes' encoder BatchNorm statistics are those of the whole batch; gradient accumulation still normalises
    per micro-batch (recorded in run.json). The NVAE step itself is not compared: its latent noise is per process."""
    single = _ddp_step(tmp_path)
    assert (single["world"], single["accum"]) == (1, 1)
    two_nodes = _ddp_step(tmp_path, nodes=2)
    assert (two_nodes["world"], two_nodes["accum"]) == (2, 1)
    accumulated = _ddp_step(tmp_path, cap=4)
    assert (accumulated["world"], accumulated["accum"]) == (1, 2)
    assert accumulated["meta"]["global_batch"] == two_nodes["meta"]["global_batch"] == 8
    assert accumulated["meta"]["per_process_batch"] == two_nodes["meta"]["per_process_batch"] == 4
    _assert_same_step(two_nodes, single)
    _assert_same_step(accumulated, single)
    # SyncBatchNorm for the NVAE under DDP only; the same checkpoint keys either way
    assert single["vae_bn_types"] == accumulated["vae_bn_types"] == ["BatchNorm2d"]
    assert two_nodes["vae_bn_types"] in (["CPUSyncBatchNorm2d"], ["SyncBatchNorm"])  # gloo on CPU / nccl on GPU
    assert two_nodes["vae_keys"] == single["vae_keys"]
    assert two_nodes["meta"]["batchnorm_synchronised"] and not single["meta"]["batchnorm_synchronised"]
    assert "SyncBatchNorm" in two_nodes["meta"]["batchnorm"]
    assert single["vae_encoder_bn"].keys() == two_nodes["vae_encoder_bn"].keys() and single["vae_encoder_bn"]
    for k, v in single["vae_encoder_bn"].items():
        torch.testing.assert_close(two_nodes["vae_encoder_bn"][k], v, atol=1e-6, rtol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------ (d) (e) (f)
def test_forced_nan_is_a_diverged_outcome(tmp_path):
    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 10, "force_nan_at_step": 3})
    assert run_cli("train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")) == 0
    info = assert_run_dir(tmp_path / "run", status="diverged")
    assert info["step"] == 3 and "force_nan_at_step" in info["reason"] and "non-finite" in info["reason"]
    model = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model["state"]["score"].values() if v.is_floating_point())


def test_forced_nan_via_subprocess_exit_code(tmp_path):
    cfg = write_config(tmp_path / "vae.yaml", "vae", train={"steps": 6, "force_nan_at_step": 0})
    proc = _subprocess(["train-vae", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert proc.wait(timeout=120) == 0
    info = assert_run_dir(tmp_path / "run", status="diverged")
    assert info["step"] == 0 and info["reason"]


def test_unknown_config_key_exits_2(tmp_path, capsys):
    cfg = write_config(tmp_path / "bad.yaml", "vae", train={"bogus_key": 1})
    assert run_cli("train-vae", "--config", str(cfg), "--out", str(tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "bogus_key" in err and "allowed" in err
    good = write_config(tmp_path / "good.yaml", "vae")
    assert run_cli("train-vae", "--config", str(good), "--out", str(tmp_path / "r"), "--set", "train.nope=1") == 2
    assert "nope" in capsys.readouterr().err
    assert run_cli("train-sgm", "--config", str(good), "--out", str(tmp_path / "r")) == 2  # kind mismatch
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


def test_dry_run_prints_config_and_trains_nothing(tmp_path, capsys):
    cfg = write_config(tmp_path / "vae.yaml", "vae")
    out = tmp_path / "run"
    assert run_cli("train-vae", "--config", str(cfg), "--out", str(out), "--dry-run", "--set", "train.steps=7") == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["vae"]["num_channels"] == 8 and printed["seed"] == 3
    assert not out.exists()


# ------------------------------------------------------------------------------------------ pieces
def test_kl_coeff_schedule_matches_reference_formula():
    total = 1000
    cfg = KLConfig(anneal_portion=0.3, const_portion=0.01, const_coeff=1e-4, max_coeff=0.7)
    assert stage1_kl_coeff(0, total, cfg) == pytest.approx(1e-4)
    assert stage1_kl_coeff(10 + 150, total, cfg) == pytest.approx(1e-4 + (0.7 - 1e-4) * 0.5)
    assert stage1_kl_coeff(total, total, cfg) == pytest.approx(0.7)
    cont = KLConfig(continue_anneal=True)
    assert [stage2_kl_coeff(s, 100, cont) for s in (0, 5, 10, 50)] == pytest.approx([0.7, 0.85, 1.0, 1.0])
    assert stage2_kl_coeff(0, 100, KLConfig()) == 1.0
    assert kl_coeff_at(5, 100, 0.0, 0.0, 0.1, 0.9) == 0.9


def test_lr_warmup_then_cosine_to_min():
    cfg = OptimConfig(lr=1e-2, lr_min=1e-4, warmup_steps=10)
    lrs = [lr_at(s, 110, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert lrs[10] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_kl_balancing_square_scheme():
    alphas = kl_balance_alphas(num_scales=2, groups_per_scale=2)
    assert alphas.tolist() == [1.0, 1.0, 4.0, 4.0]
    kl = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([4.0, 4.0]), torch.tensor([8.0, 0.0])]
    out = balanced_kl(kl, 0.5, alphas, balance=True)
    coeff = torch.tensor([2.01, 2.01, 4.01, 4.01]) / alphas
    coeff = coeff / coeff.mean()
    torch.testing.assert_close(out, 0.5 * (torch.stack(kl, 1) * coeff).sum(1))
    assert torch.equal(balanced_kl(kl, 1.0, alphas, balance=True), torch.stack(kl, 1).sum(1))  # off at kl_coeff 1
    grads = [k.clone().requires_grad_() for k in kl]
    balanced_kl(grads, 0.5, alphas, True).sum().backward()
    torch.testing.assert_close(torch.stack([g.grad[0] for g in grads]), 0.5 * coeff)  # coefficients detached


def test_ema_update_swap_and_state():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.5)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["weight"], start + 1.0)
    with ema.swapped(net):
        torch.testing.assert_close(net.weight, start + 1.0)
    torch.testing.assert_close(net.weight.detach(), start + 2.0)
    other = EMA(torch.nn.Linear(2, 2), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and other.num_updates == 1
    assert not isinstance(ema, torch.optim.Optimizer)
    torch.testing.assert_close(ema.averaged_state_dict(net)["weight"], start + 1.0)


def test_infinite_loader_resumes_its_order():
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.zeros(10))
    a = InfiniteLoader(data, batch_size=3, seed=5)
    seq = [next(a).tolist() for _ in range(7)]  # 3 batches per epoch: crosses two epoch boundaries
    b = InfiniteLoader(data, batch_size=3, seed=5)
    _ = [next(b) for _ in range(4)]
    c = InfiniteLoader(data, batch_size=3, seed=5)
    c.load_state_dict(b.state_dict())
    state = torch.get_rng_state()
    assert [next(c).tolist() for _ in range(3)] == seq[4:]
    assert torch.equal(state, torch.get_rng_state())  # making iterators does not consume the global RNG
    assert seq[0] != seq[3]  # reshuffled each epoch


def test_missing_dataset_is_a_one_line_error_with_exit_2(tmp_path):
    """A paper dataset that is not on disk: one line naming the file and the fix, no traceback, no model."""
    import subprocess
    import sys

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"kind: vae\nname: t\ndata: {{name: mnist, root: {tmp_path / 'nodata'}}}\ntrain: {{steps: 2}}\n")
    proc = subprocess.run([sys.executable, "-m", "lsgm", "train-vae", "--config", str(cfg), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train-images-idx3-ubyte.gz" in proc.stderr and "MNIST/raw" in proc.stderr
    assert not (tmp_path / "out" / "model.pt").exists()


def test_finished_run_removes_its_resume_checkpoint(tmp_path):
    """model.pt is the product; a forced rerun of a finished run must train afresh, not resume at the end."""
    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 6, "checkpoint_every_steps": 2})
    assert run_cli("train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")) == 0
    assert (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / ".ckpt" / "ckpt.pt").exists()


# ------------------------------------------------------------------------------------------ checkpoint selection
def test_stage1_keeps_the_best_validation_weights_and_stage2_starts_from_them(vae_model, tmp_path, monkeypatch):
    """train.select_every_steps: model.pt holds the weights of the evaluation with the lowest score (official
    train_vae.py keeps the checkpoint with the best validation bound), run.json records the history and the
    chosen step, and stage 2 loads exactly those weights and records the step."""
    from lsgm.train import vae as vae_task
    from lsgm.train.distributed import unwrap

    scripted, seen = iter([5.0, 1.0, 3.0, 2.0]), {}  # evaluations at steps 2, 4, 6, 8

    def selection_score(self):
        seen[2 * len(seen) + 2] = {k: v.clone() for k, v in unwrap(self.vae).state_dict().items()}
        return next(scripted)

    monkeypatch.setattr(vae_task.VAETask, "selection_score", selection_score)
    cfg = write_config(tmp_path / "vae.yaml", "vae", train={"steps": 8, "select_every_steps": 2})
    assert run_cli("train-vae", "--config", str(cfg), "--out", str(tmp_path / "vae")) == 0
    info = assert_run_dir(tmp_path / "vae")
    assert info["selection"]["evaluations"] == [[2, 5.0], [4, 1.0], [6, 3.0], [8, 2.0]]
    assert info["selection"]["selected_step"] == 4 and "importance samples" in info["selection"]["criterion"]
    assert not any("checkpoint selection" in d for d in info["deviations"])
    model = torch.load(tmp_path / "vae" / "model.pt", weights_only=True)
    _assert_same_tensors(model["state"]["vae"], seen[4], "vae")
    assert not torch.equal(seen[4]["stem.weight"], seen[8]["stem.weight"])  # the last weights differ
    # stage 2 starts from the selected weights (train_vae false: they stay as loaded) and says which step
    lsgm_cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", objective={"train_vae": False},
                            train={"steps": 2, **STAGE2_OPTIM})
    assert run_cli("train-lsgm", "--config", str(lsgm_cfg), "--vae", str(tmp_path / "vae" / "model.pt"),
                   "--out", str(tmp_path / "lsgm")) == 0
    stage2 = torch.load(tmp_path / "lsgm" / "model.pt", weights_only=True)
    _assert_same_tensors(stage2["state"]["vae"], seen[4], "stage-2 vae")
    assert json.loads((tmp_path / "lsgm" / "run.json").read_text())["vae_checkpoint"]["selected_step"] == 4


def test_selection_survives_a_kill_and_resume(tmp_path):
    """A preempted stage-1 run keeps its evaluation history and best weights: kill -9 after a checkpoint, rerun,
    and the result equals the uninterrupted run's (real 3-sample validation bounds)."""
    cfg = write_config(tmp_path / "vae.yaml", "vae", train={"steps": 12, "select_every_steps": 3,
                                                           "select_iw_samples": 3, "checkpoint_every_steps": 5})
    _kill_after_checkpoint_and_resume(["train-vae", "--config", str(cfg)], tmp_path)
    (m_ref, _), (m_res, _) = _final(tmp_path / "ref"), _final(tmp_path / "victim")
    _assert_same_tensors(m_ref["state"], m_res["state"], "state")
    sel_ref, sel_res = (json.loads((tmp_path / d / "run.json").read_text())["selection"] for d in ("ref", "victim"))
    assert sel_ref == sel_res and [s for s, _ in sel_ref["evaluations"]] == [3, 6, 9, 12]
    assert json.loads((tmp_path / "victim" / "run.json").read_text())["training"]["resumed_from_steps"][0] > 0


# ------------------------------------------------------------------------------------------ faults and bad input
@pytest.fixture(scope="module")
def diverged_vae(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("diverged_vae")
    cfg = write_config(tmp / "vae.yaml", "vae", train={"steps": 4, "force_nan_at_step": 0})
    assert run_cli("train-vae", "--config", str(cfg), "--out", str(tmp / "run")) == 0
    return tmp / "run" / "model.pt"


@pytest.mark.parametrize("kind", ["lsgm", "vae"])
def test_a_diverged_backbone_makes_the_run_on_it_a_diverged_outcome(diverged_vae, tmp_path, capsys, kind):
    """An LSGM (or the control that continues a backbone) on a diverged stage-1 run is an outcome, never a failed job:
    it trains nothing, writes its run files with status 'diverged' and a reason naming the backbone, and exits 0; its
    evaluations are NaN with that reason."""
    from lsgm.eval import cli as eval_cli

    train = {"steps": 4, **STAGE2_OPTIM} if kind == "lsgm" else {"steps": 4, "continue_backbone": True}
    cfg = write_config(tmp_path / "run.yaml", kind, train=train)
    out = tmp_path / "run"
    assert run_cli(f"train-{kind}", "--config", str(cfg), "--vae", str(diverged_vae), "--out", str(out)) == 0
    info = assert_run_dir(out, status="diverged")
    assert info["reason"].startswith("backbone diverged") and str(diverged_vae) in info["reason"]
    assert "non-finite" in info["reason"] and info["step"] == 0  # the backbone's own reason; nothing trained
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["state"] == {} and model["reason"] == info["reason"]
    assert "backbone diverged" in capsys.readouterr().err
    metrics = tmp_path / "nll.json"
    assert eval_cli.main(["nll", "--model", str(out / "model.pt"), "--out", str(metrics)]) == 0
    record = json.loads(metrics.read_text())
    assert record["status"] == "diverged" and record["reason"] == info["reason"]
    assert math.isnan(record["metrics"]["nll"])


NOT_TORCH = {"text": b"this is a text file, not a checkpoint\n",
             "random": bytes((i * 7919 + 13) % 251 for i in range(4096))}  # no zip (PK), no pickle (0x80) header


@pytest.mark.parametrize("content", sorted(NOT_TORCH))
def test_a_non_torch_vae_file_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, content):
    """A text file or random bytes as --vae: one line saying it is not a model file (not 'would run code'), exit 2, and
    no partial run folder (no OUT/config.yaml)."""
    bad = tmp_path / "model.pt"
    bad.write_bytes(NOT_TORCH[content])
    cfg = write_config(tmp_path / "lsgm.yaml", "lsgm", train={"steps": 2})
    out = tmp_path / "run"
    assert run_cli("train-lsgm", "--config", str(cfg), "--vae", str(bad), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a model file" in err and str(bad) in err, err
    assert "run code" not in err
    assert not out.exists()


def _train_keeping_checkpoints(tmp_path: Path, monkeypatch) -> tuple[list[str], Path]:
    """A finished 6-step pixel SGM run whose resume checkpoints (steps 2 and 4) were kept; (argv, checkpoint dir)."""
    from lsgm.train import loop

    cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 6, "checkpoint_every_steps": 2})
    argv = ["train-sgm", "--config", str(cfg), "--out", str(tmp_path / "run")]
    with monkeypatch.context() as m:
        m.setattr(loop, "remove_checkpoint", lambda run: None)
        assert run_cli(*argv) == 0
    for name in ("model.pt", "run.json"):  # as Snakemake deletes the outputs of a job it reruns
        (tmp_path / "run" / name).unlink()
    return argv, tmp_path / "run" / ".ckpt"


@pytest.mark.parametrize("previous", [True, False])
def test_a_corrupt_resume_checkpoint_is_set_aside(tmp_path, monkeypatch, capsys, previous):
    """A corrupt ckpt.pt never blocks a run: it is renamed with a warning and training resumes from the checkpoint
    kept before it (step 2), or without one restarts from step 0."""
    argv, ckpt_dir = _train_keeping_checkpoints(tmp_path, monkeypatch)
    ckpt = ckpt_dir / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    if not previous:
        for other in ckpt_dir.glob("*.pt"):
            if other != ckpt:
                other.unlink()
    capsys.readouterr()
    assert run_cli(*argv) == 0
    err = capsys.readouterr().err
    info = assert_run_dir(tmp_path / "run")
    assert info["training"]["resumed_from_steps"] == ([2] if previous else [])
    aside = [p.name for p in ckpt_dir.iterdir() if p.name.startswith("ckpt.pt.corrupt")]
    assert len(aside) == 1 and "set aside" in err and aside[0] in err, err
    assert ("resuming from" if previous else "restarts from step 0") in err


def _killed_writer(path: Path) -> Path:
    """kill -9 a process in the middle of an atomic write of ``path``; the temp file it leaves behind."""
    code = ("import time; from pathlib import Path; from lsgm.io import atomic_write\n"
            "def write(tmp):\n    Path(tmp).write_bytes(b'x' * 4096); print('writing', flush=True); time.sleep(120)\n"
            f"atomic_write(Path({str(path)!r}), write)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing"
        before = set(path.parent.iterdir())
    finally:
        proc.kill()
        proc.wait()
    temps = [p for p in before if p.name.startswith(f".{path.name}.") and p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].exists()
    return temps[0]


def test_temp_files_of_a_killed_save_are_removed_at_the_next_start(tmp_path):
    """A kill during a checkpoint (or model.pt) save leaves a temp file; the next start of the run removes it -- only
    our own pattern, only when its writer is dead: a live writer's temp file stays."""
    ckpt_dir, out = tmp_path / "ckpt", tmp_path / "run"
    stale = [_killed_writer(ckpt_dir / "ckpt.pt"), _killed_writer(out / "model.pt")]
    live_code = ("import time; from pathlib import Path; from lsgm.io import atomic_write\n"
                 "def write(tmp):\n    print(tmp, flush=True); time.sleep(120)\n"
                 f"atomic_write(Path({str(ckpt_dir / 'other.pt')!r}), write)\n")
    live = subprocess.Popen([sys.executable, "-c", live_code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE)
    try:
        live_tmp = Path(live.stdout.readline().decode().strip())
        (ckpt_dir / "notes.tmp").write_text("not ours")
        cfg = write_config(tmp_path / "sgm.yaml", "sgm", train={"steps": 2})
        assert run_cli("train-sgm", "--config", str(cfg), "--out", str(out), "--ckpt-dir", str(ckpt_dir)) == 0
        assert not any(p.exists() for p in stale)
        assert live_tmp.exists() and (ckpt_dir / "notes.tmp").exists()
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("objective", [{}, {"drop_inactive_var": True}])
def test_the_run_at_initialisation_holds_the_trained_runs_initial_weights(vae_model, tmp_path, objective):
    """The control "LSGM at initialisation" (train.steps 0, lsgm/controls.py) is the model a trained run of the same
    config and seed starts from: its score (raw and EMA), mixing logit, active channels and VAE equal the trainer's
    before its first step."""
    from lsgm.config import load_run_config
    from lsgm.train.distributed import unwrap
    from lsgm.train.lsgm import LSGMTask
    from lsgm.train.run import Run

    cfg = write_config(tmp_path / "init.yaml", "lsgm", train={"steps": 0, **STAGE2_OPTIM}, objective=objective)
    assert run_cli("train-lsgm", "--config", str(cfg), "--vae", str(vae_model), "--out", str(tmp_path / "init")) == 0
    info = assert_run_dir(tmp_path / "init")
    assert info["step"] == 0
    saved = torch.load(tmp_path / "init" / "model.pt", weights_only=True)
    trained = write_config(tmp_path / "trained.yaml", "lsgm", train={"steps": 6, **STAGE2_OPTIM}, objective=objective)
    run = Run(load_run_config(trained), tmp_path / "trained")
    try:
        task = LSGMTask(run, str(vae_model))
        start = {"score": unwrap(task.score).state_dict(), "vae": unwrap(task.vae).state_dict()}
    finally:
        run.close()
    for part in ("score", "vae"):
        assert saved["state"][part].keys() == start[part].keys()
        for key, value in start[part].items():
            assert torch.equal(saved["state"][part][key], value), (part, key)
    for key, value in saved["ema"].items():
        assert torch.equal(value, start["score"][key]), key
