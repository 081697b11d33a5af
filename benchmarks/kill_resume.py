"""Kill the README command mid-training and run it again: does the interrupted training resume from its checkpoint?

What a user does after laptop sleep / ``kill -9``: rerun the same command. This script, run from the repository root,

1. starts ``snakemake TARGET --cores 2`` (the workflow's default profile applies: rerun-incomplete, keep-going),
2. waits until the training job of TARGET has written a resumable checkpoint, then kills the whole process group with
   SIGKILL (no clean-up handlers run: Snakemake's lock stays behind, the job's outputs are marked incomplete),
3. runs the same command again; if Snakemake refuses with the stale lock, runs ``snakemake --unlock`` (the README's
   advice) and the command once more,
4. reads the trained run's ``run.json``: ``resumed_from_steps`` says where training continued.

Writes ``benchmarks/results/kill_resume.json`` (commands, exit codes, the lock message, resumed steps, seconds).
    python benchmarks/kill_resume.py [--target results/quick/runs/digits/vae/balanced-s0/model.pt]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lsgm.io import atomic_write_json, provenance


def snakemake(target: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", target, "--cores", "2", *extra], capture_output=True, text=True, check=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="results/quick/runs/digits/vae/balanced-s0/model.pt")
    p.add_argument("--out", default="benchmarks/results/kill_resume.json")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    run_dir = Path(args.target).parent
    stem = run_dir.name  # e.g. balanced-s0
    ckpts = f"checkpoints/{run_dir.parts[1]}/{'/'.join(run_dir.parts[3:-1])}/{stem}-*/ckpt.pt"
    for old in glob.glob(ckpts):
        os.remove(old)
    if Path(args.target).exists():
        os.remove(args.target)

    started = time.perf_counter()
    first = subprocess.Popen(["snakemake", args.target, "--cores", "2"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    while not glob.glob(ckpts):
        if first.poll() is not None or time.perf_counter() - started > args.timeout:
            print("no checkpoint appeared before the run ended", file=sys.stderr)
            return 1
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_after = time.perf_counter() - started

    second = snakemake(args.target)
    lock_message = None
    unlock = None
    if second.returncode != 0 and "cannot be locked" in (second.stdout + second.stderr):
        lock_message = next(line for line in (second.stdout + second.stderr).splitlines() if "locked" in line)
        unlock = subprocess.run(["snakemake", "--unlock"], capture_output=True, text=True, check=False).returncode
        second = snakemake(args.target)
    total = time.perf_counter() - started
    profile = next((line.strip() for line in (second.stdout + second.stderr).splitlines() if "profile" in line), None)
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    record = {
        "target": args.target, "killed_after_seconds": round(killed_after, 1),
        "rerun": {"command": f"snakemake {args.target} --cores 2", "exit_code": second.returncode,
                  "stale_lock_message": lock_message, "unlock_exit_code": unlock,
                  "profile": profile},  # Snakemake's line naming the profile it read (None: none was read)
        "resumed_from_steps": info.get("training", {}).get("resumed_from_steps"), "status": info.get("status"),
        "steps": info.get("step"), "total_seconds": round(total, 1),
        "provenance": provenance("cpu", wall_seconds=total),
    }
    atomic_write_json(Path(args.out), record)
    print(json.dumps({k: v for k, v in record.items() if k != "provenance"}, indent=1))
    return 0 if second.returncode == 0 and record["resumed_from_steps"] else 1


if __name__ == "__main__":
    sys.exit(main())
