"""A workaround for a Snakemake scheduler bug that costs the local run CPU and threads (torch-free, no Snakemake import
at module level).

Snakemake's job scheduler (``snakemake/scheduling/job_scheduler.py``, 9.x) starts a ``threading.Timer`` of the job-rate
limiter's timespan (``--max-jobs-per-timespan``, default ``100/1s``) at the end of EVERY scheduling pass while jobs
wait for resources, and every such timer, when it fires, releases the scheduler for one more pass, which starts
another timer. Each job event (start, finish) thus adds a timer chain that lives as long as jobs wait: the passes per
second grow with the events of the run. A fresh clone's quick DAG started ~154,000 threads in its first 25 minutes and
spent 22 % of a core in the scheduler; ``benchmarks/snakemake_overhead.py`` measures it on a minimal workflow. No
setting turns the limiter off (every ``--max-jobs-per-timespan`` value keeps it, and a longer timespan only delays the
exit by it: the timers are not daemon threads). Reported upstream with that workflow (docs/upstream/
snakemake-rate-limiter-timers.md; upstream issue #3804 shows the same thread explosion).

:func:`install` keeps at most one re-evaluation timer pending, a daemon thread: when the rate limit holds jobs back,
the one pending timer wakes the scheduler after the timespan exactly as before; passes triggered by job events no
longer multiply. Installed by ``workflow/rules/common.smk`` only for the Snakemake version it was written against
(:data:`FIXED_VERSIONS`); any other version is left untouched, with one line saying so.
"""

from __future__ import annotations

import threading

FIXED_VERSIONS = ("9.27.1",)  # the pinned version whose scheduler this replaces one method of (pyproject.toml)


def _schedule_reevaluation_once(self, delay: float) -> None:
    """``JobScheduler._schedule_reevalutation`` with at most one pending timer (a daemon): the flag is cleared before
    the scheduler is released, so the pass it triggers can schedule the next one."""
    if getattr(self, "_lsgm_reevaluation_pending", False):
        return
    self._lsgm_reevaluation_pending = True

    def fire() -> None:
        self._lsgm_reevaluation_pending = False
        self._open_jobs.release()

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()


def install() -> tuple[bool, str]:
    """Replace the scheduler's re-evaluation timer by :func:`_schedule_reevaluation_once`; -> (installed, what was
    done)."""
    import snakemake
    from snakemake.scheduling import job_scheduler

    scheduler = job_scheduler.JobScheduler
    if snakemake.__version__ not in FIXED_VERSIONS or not hasattr(scheduler, "_schedule_reevalutation"):
        return False, (f"lsgm: Snakemake {snakemake.__version__} is not {', '.join(FIXED_VERSIONS)}: its scheduler's "
                       "re-evaluation timers are left as they are (lsgm/snakemake_fix.py)")
    scheduler._schedule_reevalutation = _schedule_reevaluation_once
    return True, "lsgm: one pending re-evaluation timer in Snakemake's scheduler (lsgm/snakemake_fix.py)"
