"""The lag monitor: lag from reported positions and end offsets; stalls degrade, progress clears."""

from __future__ import annotations

from streams.health import Health
from streams.lag import LagMonitor


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lag_is_end_minus_next_with_the_higher_of_listed_end_and_highwater() -> None:
    m = LagMonitor(Health(), stall_after_s=10, clock=Clock())
    m.report("items", {"t.items:0": (5, 9), "t.items:1": (3, None)})
    m.set_listed_ends({"t.items:0": 7, "t.items:1": 10})  # listed 7 is Tansu's low figure: the fetch saw 9
    got = m.summary()
    assert got["partitions"]["t.items:0"]["lag"] == 4 and got["partitions"]["t.items:1"]["lag"] == 7
    assert got["total"] == 11 and got["worst"] == {"partition": "t.items:1", "lag": 7}


def test_a_partition_behind_and_not_moving_degrades_until_it_moves_or_is_forgotten() -> None:
    health, clock = Health(), Clock()
    m = LagMonitor(health, stall_after_s=10, clock=clock)
    m.report("items", {"t.items:0": (5, 5)})
    clock.now += 60  # idle and caught up for a minute: not stalled
    m.evaluate()
    m.report("items", {"t.items:0": (5, 8)})  # records arrive
    m.evaluate()
    assert not health.degraded  # just behind, not stalled
    clock.now += 11
    m.evaluate()
    assert health.conditions()["stalled:t.items:0"]["lag"] == 3
    m.report("items", {"t.items:0": (6, 8)})  # it moved
    m.evaluate()
    assert not health.degraded
    clock.now += 11
    m.evaluate()
    assert "stalled:t.items:0" in health.conditions()
    m.forget(["t.items:0"])  # revoked: not ours to report
    assert not health.degraded and m.summary()["total"] == 0
