"""What a worker did with the records a ``produce`` or ``replay`` sent: its own counters.

Why: Kafka accepts a record whether or not the worker will use it. A record whose event id the
worker has seen is dropped as a duplicate (at-least-once delivery makes that normal), so a
replay into a running worker can report ``sent=25006`` while nothing changed. The producer
cannot know that; the worker counts it (``towerstream_duplicates_total`` on its ``/metrics``).
Reading those counters before and after the send, for the topics sent to, tells the person
how many records were new, duplicates, or dead-lettered.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Counters of what the worker did with a record, by the ``topic`` label.
OUTCOMES = {
    "towerstream_events_total": "applied",
    "towerstream_duplicates_total": "duplicates",
    "towerstream_dead_letters_total": "dead_letters",
    "towerstream_stale_item_events_total": "stale",
}
_LINE = re.compile(r'^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_TOPIC = re.compile(r'topic="(?P<topic>[^"]*)"')
#: What ``duplicates`` says when no worker answers.
NO_WORKER_NOTE = ("the worker drops records whose event id it has already seen (counted as "
                  "towerstream_duplicates_total on its /metrics)")


@dataclass(frozen=True)
class Outcomes:
    """Records of the topics sent to, as the worker counted them; ``topics_seen``: any counter named them."""

    applied: float = 0.0
    duplicates: float = 0.0
    dead_letters: float = 0.0
    stale: float = 0.0
    topics_seen: bool = False

    def minus(self, before: Outcomes) -> Outcomes:
        return Outcomes(self.applied - before.applied, self.duplicates - before.duplicates,
                        self.dead_letters - before.dead_letters, self.stale - before.stale,
                        self.topics_seen)

    @property
    def total(self) -> float:
        return self.applied + self.duplicates + self.dead_letters + self.stale


def parse_outcomes(text: str, topics: Iterable[str]) -> Outcomes:
    """Sum the outcome counters of ``topics`` in a Prometheus text exposition."""
    wanted = set(topics)
    sums = dict.fromkeys(OUTCOMES.values(), 0.0)
    seen = False
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None or m["name"] not in OUTCOMES:
            continue
        t = _TOPIC.search(m["labels"])
        if t is None or t["topic"] not in wanted:
            continue
        seen = True
        sums[OUTCOMES[m["name"]]] += float(m["value"])
    return Outcomes(**sums, topics_seen=seen)


def read_outcomes(url: str, topics: Iterable[str], timeout_s: float = 2.0) -> Outcomes | None:
    """The worker's counters now, or ``None`` when nothing answers at ``url`` (``.../metrics``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return parse_outcomes(resp.read().decode("utf-8", "replace"), list(topics))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_outcomes(read: Callable[[], Outcomes | None], before: Outcomes, sent: int, wait_s: float,
                      quiet_s: float = 3.0, poll_s: float = 0.25,
                      clock: Callable[[], float] = time.monotonic) -> tuple[Outcomes | None, bool]:
    """Poll until the worker has counted ``sent`` more records, or its counters stop moving.

    Returns the change since ``before`` (``None`` if the worker stopped answering) and whether it
    covers everything sent (``False``: the worker is still behind, or some records went where
    these counters do not look, e.g. deletes of unknown items).
    """
    deadline = clock() + wait_s
    last_total, last_move = -1.0, clock()
    delta: Outcomes | None = None
    while True:
        now_ = read()
        if now_ is None:
            return delta, False
        delta = now_.minus(before)
        if delta.total >= sent:
            return delta, True
        if delta.total != last_total:
            last_total, last_move = delta.total, clock()
        if clock() >= deadline or clock() - last_move >= quiet_s:
            return delta, False
        time.sleep(poll_s)


def describe(delta: Outcomes | None, complete: bool, url: str) -> str:
    """One line for the person who sent the records."""
    if delta is None or not delta.topics_seen:
        return f"worker: no towerstream worker counted these topics at {url}; {NO_WORKER_NOTE}"
    line = (f"worker: applied={delta.applied:.0f} duplicates={delta.duplicates:.0f} "
            f"dead_letters={delta.dead_letters:.0f} stale={delta.stale:.0f}")
    if delta.duplicates:
        line += " (duplicates: event ids it had already seen, dropped)"
    if not complete:
        line += " so far (it has not counted every record sent yet)"
    return line
