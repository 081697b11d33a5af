"""lsgm/snakemake_fix.py: at most one pending re-evaluation timer in Snakemake's scheduler, and a rate-limited
scheduler is still woken after the timespan."""

from __future__ import annotations

import threading

import snakemake

from lsgm import snakemake_fix


class FakeScheduler:
    def __init__(self):
        self._open_jobs = threading.Semaphore(0)


def test_one_pending_timer_and_the_next_after_it_fires():
    sched = FakeScheduler()
    before = threading.active_count()
    for _ in range(50):  # fifty job events in one timespan: one timer, not fifty chains
        snakemake_fix._schedule_reevaluation_once(sched, 0.2)
    assert threading.active_count() - before <= 1
    assert sched._open_jobs.acquire(timeout=2.0)  # the scheduler is woken after the timespan
    assert not sched._open_jobs.acquire(timeout=0.3)  # once
    snakemake_fix._schedule_reevaluation_once(sched, 0.05)  # the pass it woke may schedule the next one
    assert sched._open_jobs.acquire(timeout=2.0)


def test_the_timers_do_not_hold_the_process_at_exit():
    sched = FakeScheduler()
    snakemake_fix._schedule_reevaluation_once(sched, 60.0)
    timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    assert timers and all(t.daemon for t in timers)


def test_it_is_installed_for_the_pinned_snakemake_and_only_there(monkeypatch):
    """The workflow installs the fix for the version it was written against; a new Snakemake (pyproject.toml's pin
    moved) leaves the scheduler alone, with a line saying so, until someone checks the bug is still there."""
    from snakemake.scheduling import job_scheduler

    original = job_scheduler.JobScheduler._schedule_reevalutation
    try:
        installed, note = snakemake_fix.install()
        assert installed, note
        assert job_scheduler.JobScheduler._schedule_reevalutation is snakemake_fix._schedule_reevaluation_once
        monkeypatch.setattr(snakemake, "__version__", "10.0.0")
        job_scheduler.JobScheduler._schedule_reevalutation = original
        installed, note = snakemake_fix.install()
        assert not installed and "10.0.0" in note
        assert job_scheduler.JobScheduler._schedule_reevalutation is original
    finally:
        job_scheduler.JobScheduler._schedule_reevalutation = original
