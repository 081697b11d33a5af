"""The evaluation settings' one home (lsgm/eval/settings.py): the CLI and the plan refuse the same values, a
config.yaml setting either takes effect or is refused naming the key, and `lsgm plan` shows what each job runs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lsgm.eval import cli as eval_cli
from lsgm.eval import settings as S
from lsgm.plan import Plan, PlanError
from lsgm.plan import main as plan_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())

# (command, flag, bad value): each out of the range the plan also refuses
BAD = [("nll", "t_eps", 2.0), ("nll", "tolerance", -1.0), ("nll", "iw_samples", 0), ("nll", "batch_size", 0),
       ("fid", "n_samples", 0), ("fid", "batch_size", 0), ("fid", "t_eps", 0.0), ("fid", "temperature", -1.0),
       ("cost", "tolerances", [1e-3, 1.5]), ("cost", "fd_samples", -1), ("samples", "n", 0),
       ("nll", "probe", "uniform"), ("fid", "bn_mode", "training")]


def _plan(mutate, scale: str = "quick") -> Plan:
    cfg = copy.deepcopy(CONFIG)
    mutate(cfg)
    return Plan(cfg, scale)


@pytest.mark.parametrize("command,key,value", BAD, ids=[f"{c}-{k}" for c, k, _ in BAD])
def test_the_cli_refuses_what_the_plan_refuses(command, key, value, capsys):
    """Before the one home, ``lsgm evaluate nll --t-eps 2`` and ``--tolerance -1`` exited 0 with status ok, and
    ``--n-samples 0`` / ``--batch-size 0`` crashed with tracebacks, while the plan refused the same values."""
    with pytest.raises(PlanError, match=rf"eval\.{command}\.{key} = .*(out of range|is not)"):
        _plan(lambda c: c["scales"]["quick"]["eval"][command].update({key: value}))
    values = [str(v) for v in (value if isinstance(value, list) else [value])]
    argv = [command, "--model", "m.pt", "--out", "o.json", S.SETTINGS[command][key].flag, *values]
    with pytest.raises(SystemExit) as exit_:
        eval_cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {S.SETTINGS[command][key].flag}" in err and ("out of range" in err or "is not" in err), err


def test_every_cli_flag_of_an_evaluation_is_a_setting_and_the_defaults_are_the_homes():
    parser = eval_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "what")
    files = {"model", "out", "ema", "device", "root", "stats", "classifier", "inception_weights", "help"}
    for command, p in sub.choices.items():
        dests = {a.dest for a in p._actions} - files
        assert dests == set(S.SETTINGS[command]), command
        for action in p._actions:
            if action.dest in S.SETTINGS[command]:
                assert action.default == S.SETTINGS[command][action.dest].default, (command, action.dest)


def test_an_unknown_setting_names_the_closest_one():
    with pytest.raises(PlanError, match=r"eval\.fid\.tolerence: unknown setting of fid; did you mean 'tolerance'"):
        _plan(lambda c: c["scales"]["quick"]["eval"]["fid"].update(tolerence=1e-3))


def test_a_setting_the_official_command_replaces_is_refused_naming_where_to_deviate():
    """The issue's case: scales.paper.eval.fid.tolerance 1e-3 changed no LSGM run (the official layer won)."""
    with pytest.raises(PlanError) as err:
        _plan(lambda c: c["scales"]["paper"]["eval"]["fid"].update(tolerance=1e-3), "paper")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("scales.paper.eval.fid.tolerance = 0.001 takes no effect for recipes.lsgm.")
    assert "the official evaluation command of" in message and "sets tolerance = 1e-05" in message
    assert "scales.paper.runs.lsgm." in message  # where a deviation goes
    # the run's own block does take effect
    plan = _plan(lambda c: c["scales"]["paper"]["runs"].setdefault("lsgm", {}).setdefault("fid", {}).update(
        eval={"fid": {"tolerance": 1e-3}}), "paper")
    assert plan.run("lsgm", "cifar10", "fid", 0).eval_settings["fid"]["tolerance"] == 1e-3
    assert plan.run("lsgm", "cifar10", "nll", 0).eval_settings["fid"].get("tolerance") == 1e-5


def test_every_paper_lsgm_evaluates_at_its_official_end_time():
    """config.yaml once said t_eps 1e-5 at the paper scale while every CIFAR-10 LSGM got 1e-6: no shadowed value is
    left (the plan would refuse it), and the settings are the official ones."""
    plan = Plan(copy.deepcopy(CONFIG), "paper")
    for run in plan.trained_models():
        if run.kind == "lsgm" and run.dataset == "cifar10":
            for metric in ("nll", "fid", "samples"):
                if metric in run.evals or metric == "samples":
                    assert run.eval_settings[metric]["t_eps"] == 1e-6, (run.target, metric)


def test_dsm_prior_with_several_importance_samples_is_refused_everywhere(capsys):
    with pytest.raises(PlanError, match="iw_samples = 4 with prior dsm"):
        _plan(lambda c: c["scales"]["quick"]["table6"]["eval"]["nll"].update(iw_samples=4))
    assert eval_cli.main(["nll", "--model", "m.pt", "--out", "o.json", "--prior", "dsm", "--iw-samples", "4"]) == 2
    assert "biases the NLL low" in capsys.readouterr().err


def test_lsgm_plan_json_shows_every_evaluation_jobs_resolved_settings(capsys):
    assert plan_main(["--scale", "smoke", "--json", "--config", str(ROOT / "config.yaml")]) == 0
    jobs = json.loads(capsys.readouterr().out)["eval_jobs"]
    kinds = {j["kind"] for j in jobs}
    assert {"nll", "fid", "cost", "samples", "variance"} <= kinds
    for job in jobs:
        if job["kind"] in S.SETTINGS and job["kind"] != "variance":
            model = job["run"].split("/")[1]  # dataset/kind/name-sN
            shown = [k for k in S.applicable(job["kind"], model)  # an opt-in measurement only where it is set
                     if not S.SETTINGS[job["kind"]][k].omit_unset or k in job["settings"]]
            assert list(job["settings"]) == shown, job["target"]
    vae_nll = next(j for j in jobs if j["kind"] == "nll" and "/vae/" in j["run"])
    assert "tolerance" not in vae_nll["settings"]  # a VAE's NLL solves no ODE: not shown as if it did


def test_lsgm_plan_takes_an_overlay_as_configfile_and_names_the_mistake(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("scales:\n  smoke:\n    eval:\n      fid: {n_samples: 16}\n")
    assert plan_main(["--scale", "smoke", "--json", "--config", str(ROOT / "config.yaml"),
                      "--configfile", str(overlay)]) == 0
    jobs = json.loads(capsys.readouterr().out)["eval_jobs"]
    assert {j["settings"]["n_samples"] for j in jobs if j["kind"] == "fid"} == {16}
    assert plan_main(["--scale", "smoke", "--config", str(overlay)]) == 2  # was: error: 'seeds'
    err = capsys.readouterr().err.strip()
    assert err == (f"lsgm plan: error: {overlay}: not a whole config (no recipes); pass a partial file as "
                   f"--configfile {overlay} to overlay config.yaml")


def test_the_cli_error_is_one_line_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "lsgm", "evaluate", "nll", "--model", "m.pt", "--out", "o.json",
                           "--t-eps", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("lsgm evaluate nll: error: argument --t-eps: 2.0 is out of "
                                                     "range; allowed: a float in (0, 1)")
