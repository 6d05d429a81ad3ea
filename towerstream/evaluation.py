"""Test-then-train evaluation over a recorded stream (prequential, as river's ``evaluate``).

For every interaction after the warm-up, the model is first asked for the user's top-K (the
user's earlier items excluded) and the list is scored against the item the user actually took;
only then does the model learn from it. Events go through in the worker's micro-batches: the
train step runs once per batch, so weights are those of the batch start for every event in it.
Histories are different: live, a user's events arrive seconds or minutes apart and each one is
in the user's history long before the next (a 50 ms batch window holds one event per user). A
recording replayed at full speed packs a whole rating session into one batch (ml-100k: one user
has ~195 of a 512-event batch), so a model with ``observe`` gets each user's events added to
history one at a time, in rounds, before the user's next event is scored, which is what live
traffic sees. Item and user records are applied in stream order (pending interactions first).

Anything with ``apply_items`` / ``apply_users`` / ``recommend_many`` / ``learn`` can be
evaluated: the Engine, and the baselines in ``bench/baselines.py``. ``PrequentialScorer`` is the
scoring half on its own, for the worker's live metrics.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from towerstream.events import Interaction, ItemDelete, ItemUpsert, UserProfile, decode_item
from towerstream.recording import RecordedRecord, decode_record
from towerstream.settings import Settings

#: The worker's micro-batch size (``Settings.batch_max``): the evaluation learns at the same cadence.
DEFAULT_BATCH_SIZE: int = int(Settings.model_fields["batch_max"].default)
#: An event is "cold" when its item had fewer than this many interactions before it.
COLD_THRESHOLD = 5
#: The long list every report scores besides K.
LONG_K = 50


class StreamingRecommender(Protocol):
    """What ``evaluate`` drives; the Engine and every baseline implement it."""

    def apply_items(self, events: Sequence[ItemUpsert | ItemDelete]) -> None: ...

    def apply_users(self, events: Sequence[UserProfile]) -> None: ...

    def recommend_many(self, user_ids: Sequence[str], k: int, *, exclude_seen: bool = True) -> Sequence[Any]:
        """One ranked list per user: item ids, ``(item_id, score)`` pairs, or objects with ``.items``."""
        ...

    def learn(self, events: Sequence[Interaction]) -> Any:
        """One micro-batch: the train step (and, for models without ``observe``, history too)."""
        ...


class ObservingRecommender(StreamingRecommender, Protocol):
    """A model that records history the moment an event arrives, apart from its train step.

    ``observe(events)`` adds the interactions to the users' histories (and whatever the model
    updates per event); ``learn(events)`` is then called with the whole micro-batch and must not
    add them again. ``evaluate`` uses ``observe`` when a model has it.
    """

    def observe(self, events: Sequence[Interaction]) -> Any: ...


def ranked_ids(rec: Any) -> list[str]:
    """Normalise one ``recommend_many`` answer to a list of item ids, best first."""
    items = getattr(rec, "items", rec)
    out: list[str] = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, (tuple, list)):
            out.append(str(it[0]))
        else:
            out.append(str(getattr(it, "item_id")))
    return out


class EvalReport(BaseModel):
    """Prequential scores. Metrics are means over scored events; timings are wall clock."""

    model_config = ConfigDict(frozen=True)

    k: int
    hr_at_k: float
    ndcg_at_k: float
    hr_at_50: float
    cold_hr_at_k: float
    cold_ndcg_at_k: float
    cold_hr_at_50: float
    #: Distinct items in all scored top-K lists / live catalog size at the end.
    coverage_at_k: float
    n_events: int = Field(description="interactions in the recording")
    n_scored: int = Field(description="interactions scored (after warm-up, not repeats)")
    n_cold: int
    n_repeats: int = Field(description="after warm-up, item already seen by the user: not scorable")
    n_items: int
    warmup: float
    batch_size: int
    seconds: float
    events_per_s: float
    learn_seconds: float
    recommend_seconds: float

    def metrics(self) -> dict[str, Any]:
        """Everything but the timings: what must be identical between two runs with one seed."""
        return self.model_dump(exclude={"seconds", "events_per_s", "learn_seconds", "recommend_seconds"})

    def table(self) -> str:
        k = self.k
        rows = [
            (f"HR@{k}", self.hr_at_k), (f"NDCG@{k}", self.ndcg_at_k), ("HR@50", self.hr_at_50),
            (f"cold HR@{k}", self.cold_hr_at_k), (f"cold NDCG@{k}", self.cold_ndcg_at_k),
            ("cold HR@50", self.cold_hr_at_50), (f"coverage@{k}", self.coverage_at_k),
        ]  # fmt: skip
        lines = [f"{name:<14}{value:8.4f}" for name, value in rows]
        lines.append(f"{'scored':<14}{self.n_scored:8d}  (cold {self.n_cold}, repeats skipped {self.n_repeats})")
        lines.append(f"{'events/s':<14}{self.events_per_s:8.0f}  ({self.n_events} events in {self.seconds:.1f} s)")
        return "\n".join(lines)


class PrequentialScorer:
    """Scores ranked lists against the item the user then took; tracks seen items and item counts.

    ``observe`` must be called for every interaction in stream order (scored or not), so
    "earlier items" and "cold" are exact.
    """

    def __init__(self, k: int = 10, long_k: int = LONG_K, cold_threshold: int = COLD_THRESHOLD) -> None:
        self.k, self.long_k, self.cold_threshold = k, max(long_k, k), cold_threshold
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.item_count: dict[str, int] = defaultdict(int)
        self.sums: dict[str, float] = defaultdict(float)
        self.recommended: set[str] = set()
        self.n_scored = self.n_cold = self.n_repeats = 0

    @property
    def depth(self) -> int:
        """How many items to ask the model for."""
        return self.long_k

    def is_repeat(self, ev: Interaction) -> bool:
        return ev.item_id in self.seen.get(ev.user_id, ())

    def score(self, ev: Interaction, ranked: Sequence[str]) -> bool | None:
        """Score ``ranked`` (best first) for ``ev``; the user's earlier items are dropped first.

        Returns whether the item was in the top K (``None``: a repeat, not scored).
        """
        if self.is_repeat(ev):
            self.n_repeats += 1
            return None
        seen = self.seen.get(ev.user_id, set())
        top = [i for i in ranked if i not in seen][: self.long_k]
        rank = top.index(ev.item_id) if ev.item_id in top else -1
        cold = self.item_count.get(ev.item_id, 0) < self.cold_threshold
        gain = 1.0 / math.log2(rank + 2) if 0 <= rank < self.k else 0.0
        hit_k, hit_long = float(0 <= rank < self.k), float(rank >= 0)
        for prefix, on in (("", True), ("cold_", cold)):
            if on:
                self.sums[prefix + "hr_k"] += hit_k
                self.sums[prefix + "ndcg_k"] += gain
                self.sums[prefix + "hr_long"] += hit_long
        self.recommended.update(top[: self.k])
        self.n_scored += 1
        self.n_cold += int(cold)
        return bool(hit_k)

    def observe(self, ev: Interaction) -> None:
        """Record the interaction as history (after it was scored)."""
        self.seen[ev.user_id].add(ev.item_id)
        self.item_count[ev.item_id] += 1

    def summary(self) -> dict[str, float]:
        n, nc = max(self.n_scored, 1), max(self.n_cold, 1)
        return {
            "hr_at_k": self.sums["hr_k"] / n,
            "ndcg_at_k": self.sums["ndcg_k"] / n,
            "hr_at_50": self.sums["hr_long"] / n,
            "cold_hr_at_k": self.sums["cold_hr_k"] / nc,
            "cold_ndcg_at_k": self.sums["cold_ndcg_k"] / nc,
            "cold_hr_at_50": self.sums["cold_hr_long"] / nc,
        }


def _decode(rec: RecordedRecord) -> ItemUpsert | ItemDelete | UserProfile | Interaction | None:
    event: ItemUpsert | ItemDelete | UserProfile | Interaction | None = decode_record(rec)
    return event  # None for other topics (requests, dead letters...): not part of the stream


class EvalObserver(Protocol):
    """Watches an evaluation (``towerstream drift plot`` draws its reports from one, so that the
    plot's hit rate is this evaluation's, event for event)."""

    def probe(self, ev: Interaction, hit: bool) -> None:
        """``ev`` was scored (after the warm-up, not a repeat): ``hit``, its item was in the top K."""

    def observe_served(self, recommendations: Any) -> None:
        """One list the model answered for scoring."""

    def after_learn(self, model: Any, events: Sequence[Interaction], result: Any) -> Any:
        """The micro-batch ``events`` was learned; ``result`` is what ``learn`` returned."""


def evaluate(
    records: Iterable[RecordedRecord],
    model: StreamingRecommender,
    *,
    warmup: float = 0.5,
    k: int = 10,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Any = None,
    observer: EvalObserver | None = None,
) -> EvalReport:
    """Test-then-train over ``records``; the first ``warmup`` fraction of interactions is only learned.

    ``progress``: optional callable ``(done_events, total_events)`` called after each batch.
    """
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    if k < 1 or batch_size < 1:
        raise ValueError("k and batch_size must be >= 1")
    events = [ev for ev in (_decode(r) for r in records) if ev is not None]
    n_events = sum(isinstance(ev, Interaction) for ev in events)
    n_warm = int(n_events * warmup)
    scorer = PrequentialScorer(k=k)
    catalog: set[str] = set()
    pending: list[Interaction] = []
    done = 0
    t_learn = t_rec = 0.0
    t_start = time.perf_counter()

    observe = getattr(model, "observe", None)

    def score_and_observe(chunk: list[tuple[int, Interaction]], extra: int) -> None:
        nonlocal t_rec
        users = list(dict.fromkeys(ev.user_id for pos, ev in chunk if pos >= n_warm))
        lists: dict[str, list[str]] = {}
        if users:
            t0 = time.perf_counter()
            answers = model.recommend_many(users, scorer.depth + extra, exclude_seen=True)
            t_rec += time.perf_counter() - t0
            lists = {u: ranked_ids(a) for u, a in zip(users, answers)}
            if observer is not None:
                for a in answers:
                    observer.observe_served(a)
        for pos, ev in chunk:
            if pos >= n_warm:
                hit = scorer.score(ev, lists[ev.user_id])
                if observer is not None and hit is not None:
                    observer.probe(ev, hit)
            scorer.observe(ev)
            catalog.add(ev.item_id)

    def flush() -> None:
        nonlocal done, t_learn
        if not pending:
            return
        batch = [(done + j, ev) for j, ev in enumerate(pending)]
        if observe is None:
            # Everything in the batch is scored with the pre-batch model; the scorer also drops the
            # user's same-batch earlier items, so ask for enough to keep ``depth`` after that.
            counts = Counter(ev.user_id for _, ev in batch)
            score_and_observe(batch, max(counts.values()))
        else:
            # Round r holds each user's r-th event of the batch: a user's history is current for
            # every event, as it is live, while weights stay those of the batch start.
            rounds: dict[int, list[tuple[int, Interaction]]] = defaultdict(list)
            occurrence: Counter[str] = Counter()
            for pos, ev in batch:
                rounds[occurrence[ev.user_id]].append((pos, ev))
                occurrence[ev.user_id] += 1
            for r in range(len(rounds)):
                score_and_observe(rounds[r], 0)
                t0 = time.perf_counter()
                observe([ev for _, ev in rounds[r]])
                t_learn += time.perf_counter() - t0
        t0 = time.perf_counter()
        result = model.learn(list(pending))
        t_learn += time.perf_counter() - t0
        if observer is not None:
            observer.after_learn(model, list(pending), result)
        done += len(pending)
        pending.clear()
        if progress is not None:
            progress(done, n_events)

    # Consecutive item (or user) records go to the model in one call, still in stream order.
    run: list[Any] = []

    def flush_run() -> None:
        if not run:
            return
        if isinstance(run[0], UserProfile):
            model.apply_users(list(run))
        else:
            model.apply_items(list(run))
            for it in run:
                (catalog.discard if isinstance(it, ItemDelete) else catalog.add)(it.item_id)
        run.clear()

    for ev in events:
        if isinstance(ev, Interaction):
            flush_run()
            pending.append(ev)
            if len(pending) >= batch_size:
                flush()
        else:
            flush()
            if run and isinstance(run[0], UserProfile) != isinstance(ev, UserProfile):
                flush_run()
            run.append(ev)
    flush_run()
    flush()
    seconds = time.perf_counter() - t_start
    return EvalReport(
        k=k,
        **scorer.summary(),
        coverage_at_k=len(scorer.recommended & catalog) / max(len(catalog), 1),
        n_events=n_events,
        n_scored=scorer.n_scored,
        n_cold=scorer.n_cold,
        n_repeats=scorer.n_repeats,
        n_items=len(catalog),
        warmup=warmup,
        batch_size=batch_size,
        seconds=seconds,
        events_per_s=n_events / seconds if seconds > 0 else 0.0,
        learn_seconds=t_learn,
        recommend_seconds=t_rec,
    )
