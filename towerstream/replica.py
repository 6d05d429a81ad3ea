"""A serving replica's state: the model versions the trainer published, and the answers from them.

Pure (no Kafka, no HTTP): ``streams/serve.py`` reads the published topics and the interactions
and hands their records here; this module decides what a version is, when it is complete, and
answers queries from exactly one version at a time.

Why a version is switched to whole: a replica that mixed one version's user tower with another
version's item vectors would score in two unrelated spaces. So the active state (version, user
model, index of that version's item vectors) is one immutable object, replaced by one attribute
assignment when the next version is complete; a query reads it once and uses only it.

Why nothing here depends on arrival order across partitions: any number of replicas read the
same topics with their own interleaving of partitions, and a client must get the same answer
from any of them. Item vectors are keyed by item id (a compacted topic has one live record per
key), a user's history is ordered by event time then event id, popularity is a plain sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from towerstream.events import Interaction, RecommendResponse
from towerstream.events.recommend import RecommendRequest

__all__ = ["Record", "Replica"]

#: ``(partition, offset, key, value)``: one Kafka record as the consumer read it; value ``None`` a tombstone.
Record = tuple[int, int, bytes, bytes | None]


class Replica:
    """The active version, the pending ones, the users' recent interactions and popularity.

    Thread model: one thread (the consumer's) calls the ``apply_*``/``set_item_positions``/
    ``maybe_switch`` methods; any number of threads call ``recommend``/``item``/``status``
    concurrently with it. Readers take the active state once per call and never see a version
    half built.
    """

    def __init__(self, *, max_k: int = 500, seen_limit: int = 2000, index_threads: int = 1) -> None:
        """``max_k`` bounds ``k`` (as the worker's settings do); ``seen_limit`` the seen items kept
        per user until a version's meta says otherwise; ``index_threads`` Faiss's OpenMP threads."""
        raise NotImplementedError

    def apply_item_records(self, records: Sequence[Record]) -> int:
        """Item-vectors records, in the order one partition's consumer read them (any mix of partitions).

        A vector tagged with the active version is upserted into the active index; tagged with a
        newer version, into that pending version; older than the active version or than the
        newest complete version seen, ignored. A tombstone deletes the item from the active and
        every pending version. Each record also moves that partition's position to ``offset + 1``.
        Undecodable records are counted (``status()["skipped"]``) and skipped. Calls
        ``maybe_switch``. Returns the number of records applied (not skipped or ignored).
        """
        raise NotImplementedError

    def apply_model_records(self, records: Sequence[Record]) -> int:
        """Model-topic records: ``part-<i>`` parts and ``version`` records (``VersionComplete``).

        Parts and completions of versions at or below the active one are ignored (a compacted
        topic replays them at start). Undecodable ones are counted and skipped. Calls
        ``maybe_switch``. Returns the number of records applied.
        """
        raise NotImplementedError

    def apply_interactions(self, events: Sequence[Interaction]) -> int:
        """Validated interactions into each user's history and seen items, and into popularity.

        Applied at once, without waiting for the trainer; an ``event_id`` already applied is
        skipped. Returns the number applied.
        """
        raise NotImplementedError

    def set_item_positions(self, positions: Mapping[int, int]) -> None:
        """The consumer's next offset per item-vectors partition (it may pass compacted gaps and
        control records no record reports). Positions only move forward. Calls ``maybe_switch``."""
        raise NotImplementedError

    def maybe_switch(self) -> int | None:
        """Switch to the newest complete version whose item offsets have been read; return it, or ``None``.

        Complete: every part and its ``VersionComplete`` are in, and every item-vectors position is
        at or past its ``item_offsets``. Pending versions older than the one switched to are dropped.
        """
        raise NotImplementedError

    def recommend(self, req: RecommendRequest, *, now_ms: int | None = None) -> RecommendResponse:
        """Top ``req.k`` at the active version, as the worker answers (seen items and business
        filters applied inside the search), or popularity with a ``fallback_reason``."""
        raise NotImplementedError

    def item(self, item_id: str) -> dict[str, Any] | None:
        """``{"item_id", "version", "categories", "creator", "title"}`` of a live item of the active version."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """``{"version", "pending", "items", "items_digest", "users", "skipped", "switches",
        "positions", "newest_complete"}``: what ``/healthz`` and ``/metrics`` report.

        ``skipped`` maps ``(topic, reason)`` -> count, topics ``"item-vectors"``, ``"model"``,
        ``"interactions"``.
        """
        raise NotImplementedError
