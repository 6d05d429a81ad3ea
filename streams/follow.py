"""Where a replica's reader of the followed topics stands: positions, log ends, start targets.

Why apart from the reader: ``/healthz``, ``/metrics`` and the reader itself all ask the same
questions (has every followed partition been read up to where its log ended at start? how far
behind is each topic? how old is the newest record applied?), and the answers must not depend
on how the reader happens to batch its fetches. Everything here runs on the event loop.

Targets are the log ends seen at start. Tansu lists a partition's end as the base offset of its
last record batch + 1 (low when that batch holds several records), so the reader probes a fetch's
high watermark, which is exact on both brokers, and takes the higher of the two
(``streams.log_bounds``). A partition that appears later (the topic grew) is read from its start
and has no target: readiness is about what existed at start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PartitionState:
    topic: str  # logical name ("item-vectors", "model", "interactions")
    partition: int
    #: The next offset the reader will read (the consumer's position once records were applied).
    position: int = 0
    #: The log end at start (None: not known yet, or the partition appeared after start).
    target: int | None = None
    #: The newest high watermark a fetch reported.
    highwater: int | None = None

    @property
    def caught_up(self) -> bool:
        return self.target is None or self.position >= self.target

    @property
    def lag(self) -> int:
        end = max(e for e in (self.highwater, self.target, self.position) if e is not None)
        return max(end - self.position, 0)


@dataclass
class FollowState:
    """Every followed partition, the newest record timestamp applied per topic, and readiness."""

    topics: tuple[str, ...]
    partitions: dict[tuple[str, int], PartitionState] = field(default_factory=dict)
    #: logical topic -> newest record timestamp applied (ms).
    newest_ms: dict[str, int] = field(default_factory=dict)
    #: True once the start targets are known (the reader assigned itself every partition).
    started: bool = False

    def add(self, topic: str, partition: int, target: int | None) -> PartitionState:
        st = self.partitions.get((topic, partition))
        if st is None:
            st = self.partitions[(topic, partition)] = PartitionState(topic, partition, target=target)
        return st

    def applied(self, topic: str, partition: int, position: int, highwater: int | None,
                newest_ms: int | None) -> None:
        st = self.add(topic, partition, None)
        st.position = max(st.position, position)
        if highwater is not None:
            st.highwater = highwater
        if newest_ms is not None and newest_ms > self.newest_ms.get(topic, -1):
            self.newest_ms[topic] = newest_ms

    @property
    def caught_up(self) -> bool:
        return self.started and all(p.caught_up for p in self.partitions.values())

    def behind(self) -> dict[str, list[int]]:
        """topic -> partitions not yet read up to their start target."""
        out: dict[str, list[int]] = {}
        for p in self.partitions.values():
            if not p.caught_up:
                out.setdefault(p.topic, []).append(p.partition)
        return {t: sorted(ps) for t, ps in sorted(out.items())}

    def lag(self) -> dict[str, int]:
        """topic -> records behind the log end (summed over its partitions)."""
        out = {t: 0 for t in self.topics}
        for p in self.partitions.values():
            out[p.topic] = out.get(p.topic, 0) + p.lag
        return out

    def behind_ms(self, now_ms: int | None = None) -> dict[str, int | None]:
        """topic -> now minus the newest record timestamp applied (None: nothing applied yet)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return {t: (max(now_ms - self.newest_ms[t], 0) if t in self.newest_ms else None) for t in self.topics}

    def positions(self, topic: str) -> dict[int, int]:
        return {p.partition: p.position for p in self.partitions.values() if p.topic == topic}

    def summary(self) -> dict[str, Any]:
        return {f"{p.topic}:{p.partition}": {"position": p.position, "target": p.target, "highwater": p.highwater}
                for p in sorted(self.partitions.values(), key=lambda p: (p.topic, p.partition))}
