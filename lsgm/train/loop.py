"""The training loop: resume, step, log, checkpoint, finish.

A trainer is a "task" object with ``modules`` / ``optimizers`` / ``emas`` dicts, ``train_step(x, step)``,
``validate()``, ``model_state()`` and ``meta`` (see :class:`lsgm.train.task.Task`); :func:`train` drives it
through a :class:`lsgm.train.run.Run`: resume, step, log, checkpoint, finish. Divergence and preemption are
outcomes.
"""

from __future__ import annotations

import sys
import time

from lsgm.train.checkpoint import remove_checkpoint, resume, save_checkpoint
from lsgm.train.run import Diverged, Run
from lsgm.train.task import Task

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; rerun to resume


def train(run: Run, task: Task) -> int:
    """The training loop: resume, step, log, checkpoint; divergence and preemption are outcomes.
    Returns the process exit code: 0 (completed or diverged) or 75 (preempted; rerun resumes)."""
    from tqdm import tqdm

    run.begin()
    start = resume(run, task)
    cfg, total = run.cfg.train, run.total_steps
    bar = tqdm(total=total, initial=start, disable=not run.is_main, dynamic_ncols=True, mininterval=1.0,
               desc=f"{run.cfg.kind}:{run.cfg.name}")
    t_last, step_last = time.time(), start
    try:
        for step in range(start, total):
            batches = [next(task.loader).to(run.device, non_blocking=True) for _ in range(run.grad_accum)]
            stats = task.train_step(batches, step)
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == total:
                now = time.time()
                rate = (done - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, done
                if run.scaler is not None:
                    stats["grad_scale"] = run.scaler.get_scale()
                run.log_stats({"step": done, **stats, "steps_per_second": rate, "seconds": run.wall_seconds()})
                bar.set_postfix(loss=f"{stats['loss']:.4g}", nelbo=f"{stats.get('nelbo', float('nan')):.4g}",
                                steps_s=f"{rate:.2f}")
            if run.selection.due(done, total):
                run.selection.update(task, done)
            if done == total:
                break
            stop, due = run.poll(done)
            if due:
                save_checkpoint(run, task, done)
            if stop:
                bar.close()
                print(f"signal {run.stop.signum}: checkpoint at step {done} in {run.ckpt_dir}; exiting "
                      f"{EXIT_PREEMPTED} (rerun to resume)", file=sys.stderr)
                return EXIT_PREEMPTED
    except Diverged as err:
        bar.close()
        print(f"diverged: {err.reason}", file=sys.stderr)
        run.finish(task, "diverged", err.step, err.reason)
        remove_checkpoint(run)
        return 0
    bar.close()
    run.finish(task, "completed", total, None)
    remove_checkpoint(run)
    return 0


def mean_stats(per_batch: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of the statistics of the micro-batches of one step."""
    return {k: sum(s[k] for s in per_batch) / len(per_batch) for k in per_batch[0]}
