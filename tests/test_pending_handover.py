"""Taking the pending counts hands their dicts over whole; stats are made where first read."""

from __future__ import annotations

from aiosessionstore._pending import Pending
from aiosessionstore._session import ClientStats


def pending_with(names: int) -> Pending:
    pending = Pending(1000)
    for number in range(names):
        calls = pending.calls(pending.tools, f"t{number}")
        calls.calls += 1
        calls.timed(2.0)
        pending.client(f"c{number}")[0] += 1
    pending.counts[0] += names
    pending.active_at = 1.0
    return pending


def test_taken_counts_are_what_was_pending() -> None:
    """The counts taken equal the snapshot made just before the take."""
    pending = pending_with(5)
    before = pending.snapshot()
    taken = pending.take()
    assert taken.counts == before
    assert dict(taken.counts.clients) == {f"c{n}": ClientStats(1, 0) for n in range(5)}
    assert taken.active_at == 1.0


def test_counts_made_after_the_take_stay_pending() -> None:
    """A call counted after the take goes to the next write, not into the one taken."""
    pending = pending_with(2)
    taken = pending.take()
    pending.calls(pending.tools, "t0").calls += 5
    pending.client("c0")[0] += 5
    pending.active_at = 2.0
    assert taken.counts.tools["t0"].calls == 1
    assert taken.counts.clients["c0"].tool_calls == 1
    assert pending.snapshot().tools["t0"].calls == 5


def test_a_failed_write_gives_the_counts_back() -> None:
    """Counts given back are added to what was counted since, name by name."""
    pending = pending_with(3)
    taken = pending.take()
    pending.calls(pending.tools, "t1").calls += 1
    pending.active_at = 2.0
    pending.give_back(taken)
    assert {name: stats.calls for name, stats in pending.snapshot().tools.items()} == {
        "t1": 2,
        "t0": 1,
        "t2": 1,
    }
