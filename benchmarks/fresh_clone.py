"""Time the README's commands from a fresh clone, as a new user runs them.

``python benchmarks/fresh_clone.py dag``    clones this repository (its HEAD) into a temporary folder and runs the
                                          README's main command there: ``snakemake --cores all`` (the quick scale,
                                          every job, ending with ``results/quick/reproduction.md``);
``python benchmarks/fresh_clone.py demo``   the same for ``snakemake --cores all --config scale=demo`` (one recipe and
                                          its controls at 10,000 stage-2 steps: ``--keep reference/demo``);
``python benchmarks/fresh_clone.py tests``  the same clone, then the README's test command ``python -m pytest -q``.

The clone's own code runs (``PYTHONPATH`` = the clone: what ``pip install -e .`` in it would give, without changing
this environment's install). Writes ``benchmarks/results/fresh_clone_{dag,tests}.json``: the command, exit code, wall
seconds, the job count and the reproduction summary line (dag) or the pytest counts (tests), the commit, the load
average before and after (a busy machine makes the time meaningless; the record says so), and the environment
(``lsgm.io.provenance``). ``--keep DIR`` copies the clone's ``results/quick`` to DIR (how ``reference/quick`` is
made: ``--keep reference/quick``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lsgm.io import atomic_write_json, git_commit, provenance  # noqa: E402

COMMANDS = {"dag": ["snakemake", "--cores", "all"], "demo": ["snakemake", "--cores", "all", "--config", "scale=demo"],
            "tests": [sys.executable, "-m", "pytest", "-q"]}
SCALES = {"dag": "quick", "demo": "demo"}  # the scale each DAG command runs


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _dag_facts(output: str, clone: Path, scale: str) -> dict:
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", output)
    summary = clone / "results" / scale / "reproduction.md"
    printed = [line for line in output.splitlines() if line.startswith("reproduction (")]
    return {"jobs": int(done[-1][1]) if done else None, "printed": printed[-1] if printed else None,
            "reproduction": summary.read_text(encoding="utf-8").splitlines()[0] if summary.is_file() else None}


def _test_facts(output: str) -> dict:
    tail = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", tail[-1])} \
        if tail else {}
    # pytest's --durations lines (PYTEST_ADDOPTS=--durations=N), slowest first: where the suite's time goes
    slowest = [line.strip() for line in output.splitlines() if re.match(r"\s*\d+\.\d+s (call|setup|teardown) ", line)]
    return {"summary": tail[-1].strip("= ") if tail else None, **counts, "slowest": slowest[:25]}


def _slurm_cluster() -> str | None:
    """The local Slurm cluster's nodes (tests/test_slurm_cluster.py runs only with one), or None."""
    if shutil.which("sinfo") is None:
        return None
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, check=False)
    return out.stdout.strip().replace("\n", ", ") if out.returncode == 0 and out.stdout.strip() else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=sorted(COMMANDS))
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/fresh_clone_<what>.json")
    parser.add_argument("--keep", type=Path, default=None, help="dag, demo: copy the clone's results/<scale> here")
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"fresh_clone_{args.what}.json"
    commit = git_commit()
    with tempfile.TemporaryDirectory(prefix="lsgm-fresh-") as tmp:
        clone = Path(tmp) / "x"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = {**os.environ, "PYTHONPATH": str(clone)}
        load_before = _load()
        started = time.perf_counter()
        proc = subprocess.run(COMMANDS[args.what], cwd=clone, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        output = proc.stdout + proc.stderr
        (Path(tmp) / "output.log").write_text(output, encoding="utf-8")
        scale = SCALES.get(args.what)
        facts = _dag_facts(output, clone, scale) if scale else _test_facts(output)
        kept_logs = None
        if proc.returncode != 0:  # the clone goes with its temporary folder: keep what says why it failed
            kept_logs = Path(tempfile.mkdtemp(prefix=f"lsgm-fresh-{args.what}-failed-"))
            (kept_logs / "output.log").write_text(output, encoding="utf-8")
            if (clone / "logs").is_dir():
                shutil.copytree(clone / "logs", kept_logs / "logs")
            print(f"{args.what}: exit {proc.returncode}; its output and job logs are in {kept_logs}", file=sys.stderr)
        if args.keep is not None and scale and proc.returncode == 0:  # never a half-made reference
            if args.keep.exists():
                shutil.rmtree(args.keep)
            shutil.copytree(clone / "results" / scale, args.keep,
                            ignore=shutil.ignore_patterns("runs", "configs", "fid_stats"))
        cloned_commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                       check=True).stdout.strip()
    record = {"what": args.what, "command": " ".join(COMMANDS[args.what][-3:] if args.what == "tests"
                                                     else COMMANDS[args.what]),
              "setup": "git clone -q . DIR; cd DIR (packages already installed; the clone's code on PYTHONPATH)",
              "exit_code": proc.returncode, "seconds": round(seconds, 1), "minutes": round(seconds / 60, 1),
              "cloned_commit": cloned_commit, "nproc": os.cpu_count(), "load_before": load_before,
              "load_after": _load(), **facts,
              **({"slurm_cluster": _slurm_cluster()} if args.what == "tests" else {}), "output_tail": output.splitlines()[-5:],
              "provenance": provenance("cpu", wall_seconds=seconds, source_commit=commit)}
    atomic_write_json(out, record)
    print(f"{args.what}: exit {proc.returncode}, {seconds / 60:.1f} min -> {out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
