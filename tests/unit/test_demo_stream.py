"""The demo's stream is honest about time and ids: event times from now, ids no example shares."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from towerstream.cli_run import demo_stream
from towerstream.events.base import epoch_ms
from towerstream.recording import decode_record

#: "now" for the test: an hour ago, a whole second (the stream is placed relative to it; event
#: times more than a day ahead of the real clock would be rejected by the schemas).
NOW_MS = (int(time.time()) - 3600) * 1000
README = Path(__file__).resolve().parents[2] / "README.md"


def demo_args(**kw: float) -> argparse.Namespace:
    base = {"users": 50, "items": 80, "rate": 200.0, "duration": 5.0, "seed": 0}
    return argparse.Namespace(**{**base, **kw})


def test_event_times_start_now_and_follow_the_send_rate() -> None:
    _, records = demo_stream(demo_args(), now_ms=NOW_MS)
    events = [decode_record(r) for r in records]
    times = [epoch_ms(e.ts) for e in events]
    assert min(times) == NOW_MS  # the catalog and profiles, at the start
    assert all(r.timestamp == t for r, t in zip(records, times))  # Kafka's record time too
    inter = [e for e in events if type(e).__name__ == "Interaction"]
    assert len(inter) == 1000
    # 200 interactions a second for 5 s: the last one 5 s after the start, as the demo sends it.
    assert epoch_ms(inter[-1].ts) == NOW_MS + 5000
    assert epoch_ms(inter[1].ts) - epoch_ms(inter[0].ts) == 5


def test_each_run_has_its_own_event_ids_and_the_readme_uses_none_of_them() -> None:
    run_a, a = demo_stream(demo_args(), now_ms=NOW_MS)
    _, b = demo_stream(demo_args(), now_ms=NOW_MS + 60_000)
    ids = lambda recs: {r.value["event_id"] for r in recs if r.topic == "interactions"}
    assert ids(a) and not ids(a) & ids(b)
    assert all(i.startswith(run_a) for i in ids(a))
    readme_ids = set(re.findall(r'"event_id"\s*:\s*"([^"]+)"', README.read_text()))
    readme_ids |= set(re.findall(r'event_id="([^"]+)"', README.read_text()))
    assert readme_ids, "the README shows posting an interaction"
    assert not any(re.fullmatch(r"(demo\d+-)?e\d+", i) for i in readme_ids), readme_ids
