"""The interactions agent's queue: committed batches train in order, merged once the model is mature.

Runs the real ``WorkerRuntime`` threads and a real ``Engine``; only Faust is absent (the queue
never touches it unless a batch fails).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.runtime import WorkerRuntime
from streams.training_queue import TrainingQueue
from towers import TowerConfig
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Interaction, ItemUpsert
from towerstream.settings import Settings

SMALL = EngineConfig(tower=TowerConfig(dim=16, hidden=32, uniform_negatives=16, seed=1), index_kind="flat")
T0 = 1_700_000_000_000


def clicks(start: int, n: int) -> list[Interaction]:
    return [Interaction(event_id=f"e{k}", user_id=f"u{k % 7}", item_id=f"i{k % 20}", ts=T0 + k)
            for k in range(start, start + n)]


def run_batches(tmp: Path, merge_after: int) -> tuple[int, int, int]:
    """Five 40-event batches queued while the training thread is busy -> (steps, trained, untrained)."""
    eng = Engine.open(tmp, SMALL)
    eng.apply_items([ItemUpsert(item_id=f"i{i}", title=f"t{i % 3}", ts=T0) for i in range(20)])
    runtime = WorkerRuntime(Settings(data_dir=tmp / "unused"))
    runtime.monitor = None

    async def main() -> None:
        queue = TrainingQueue(runtime, eng, "t.interactions", max_events=1000, max_pending=10_000,
                              merge_after=merge_after)
        eng.lock.acquire()  # the training thread is busy: the batches queue up behind it
        try:
            for b in range(5):
                await queue.put(eng.commit_interactions(clicks(40 * b, 40)), [])
            await asyncio.sleep(0.2)
        finally:
            eng.lock.release()
        await queue.join()
        assert queue.pending_events == 0

    v0 = eng.model_version
    asyncio.run(main())
    runtime.train_pool.shutdown()
    return eng.model_version - v0, eng.trained_in_model, eng.untrained_events


def test_a_mature_model_trains_a_backlog_in_merged_steps(tmp_path: Path) -> None:
    steps, trained, untrained = run_batches(tmp_path, merge_after=0)
    # All five were queued before the queue's task first ran: one merged step.
    assert (steps, trained, untrained) == (1, 200, 0)


def test_a_young_model_trains_every_batch_on_its_own(tmp_path: Path) -> None:
    steps, trained, untrained = run_batches(tmp_path, merge_after=10_000)
    assert (steps, trained, untrained) == (5, 200, 0)
