"""Snakemake's own overhead in a local run: the scheduler's re-evaluation timers, with and without lsgm/snakemake_fix.py.

A minimal workflow -- ``--jobs`` jobs that each sleep ``--sleep`` seconds, run with ``--cores 2`` so most of them wait
for a core -- through the real Snakemake CLI, twice: stock, and with the fix the workflow installs. For each: the
``threading.Timer`` objects the Snakemake process created, its CPU seconds (user + system, children excluded) and the
wall time. The workflow is written into a temporary folder (it is the minimal example of
docs/upstream/snakemake-rate-limiter-timers.md).

    python benchmarks/snakemake_overhead.py [--jobs 120] [--sleep 1] [--out benchmarks/results/snakemake_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = '''rule all:
    input: expand("out/{{i}}.txt", i=range({jobs}))

rule one:
    output: "out/{{i}}.txt"
    shell: "sleep {sleep} && echo {{wildcards.i}} > {{output}}"
'''
# Runs Snakemake's CLI in-process, counting the Timer objects it creates; prints one JSON line at exit.
RUNNER = '''import atexit, json, resource, sys, threading, time
count = [0]
original = threading.Timer.__init__
def counting(self, *args, **kwargs):
    count[0] += 1
    original(self, *args, **kwargs)
threading.Timer.__init__ = counting
start = time.time()
def report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"timers": count[0], "cpu_seconds": r.ru_utime + r.ru_stime,
                                 "wall_seconds": time.time() - start}), file=sys.stderr)
atexit.register(report)
if sys.argv[1] == "fixed":
    from lsgm import snakemake_fix
    assert snakemake_fix.install()[0]
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[2:]]
main()
'''


def run(variant: str, folder: Path) -> dict:
    subprocess.run(["rm", "-rf", str(folder / "out"), str(folder / ".snakemake")], check=True)
    proc = subprocess.run([sys.executable, "-c", RUNNER, variant, "--cores", "2", "--quiet", "all"], cwd=folder,
                          capture_output=True, text=True)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"snakemake ({variant}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=120)
    p.add_argument("--sleep", type=float, default=1.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "snakemake_overhead.json"))
    args = p.parse_args(argv)
    from lsgm.io import atomic_write_json, provenance

    started, load = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "Snakefile").write_text(SNAKEFILE.format(jobs=args.jobs, sleep=args.sleep))
        results = {variant: run(variant, folder) for variant in ("stock", "fixed")}
    for variant, r in results.items():
        print(f"{variant:6s}: {r['timers']:6d} timers, {r['cpu_seconds']:6.2f} CPU s, {r['wall_seconds']:6.1f} s wall")
    out = {"benchmark": "snakemake_overhead", "jobs": args.jobs, "sleep_seconds": args.sleep, "cores": 2,
           "results": results,
           "timer_ratio": results["stock"]["timers"] / max(1, results["fixed"]["timers"]),
           "cpu_ratio": results["stock"]["cpu_seconds"] / results["fixed"]["cpu_seconds"],
           "settings": {"command": " ".join(sys.argv), "load_average_1_5_15min": {"before": load,
                                                                                   "after": os.getloadavg()},
                        "snakefile": SNAKEFILE.format(jobs=args.jobs, sleep=args.sleep)},
           "provenance": provenance("cpu", wall_seconds=time.time() - started)}
    atomic_write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
