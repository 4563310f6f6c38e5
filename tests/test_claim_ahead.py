"""How far the poll loop claims ahead of its free threads (delivery_worker/claim_ahead.py)."""

from __future__ import annotations

from delivery_worker.claim_ahead import ClaimAhead


def settled(ahead: ClaimAhead, *, job: float, cycle: float) -> int:
    for _ in range(200):
        ahead.job_took(job)
        ahead.cycle_took(cycle)
    return ahead.tasks


def test_a_quarter_of_the_threads_before_anything_is_measured():
    assert ClaimAhead(threads=128, batch_size=50).tasks == 32
    assert ClaimAhead(threads=2, batch_size=50).tasks == 0


def test_slow_endpoints_keep_the_floor_fast_ones_get_up_to_a_batch():
    assert settled(ClaimAhead(128, 50), job=0.2, cycle=0.02) == 32  # 13 would do: the floor holds
    assert settled(ClaimAhead(16, 50), job=0.04, cycle=0.02) == 8  # one cycle's worth of work
    assert settled(ClaimAhead(16, 50), job=0.001, cycle=0.01) == 16  # 160 wanted: never beyond threads
    assert settled(ClaimAhead(64, 50), job=0.001, cycle=0.01) == 50  # nor beyond a batch
    assert settled(ClaimAhead(512, 50), job=0.001, cycle=0.01) == 128  # the floor above a batch
