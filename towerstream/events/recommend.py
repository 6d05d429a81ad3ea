"""Recommendation requests and responses, over HTTP and the Kafka request/reply stream.

Schema version 2 (``RECOMMEND_SCHEMA_VERSION``) added what a person needs to read an answer:
each item's title and categories (``RecommendRequest.fields`` trims them), the scale its scores
are on (``RecommendResponse.score_scale``), and ``Explanation`` (``/explain``). A version-1
request or response still parses (the new fields have defaults); a version-1 reader refuses a
version-2 document rather than misread it (``extra="forbid"`` and its ``schema_version`` bound).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from towerstream.events.base import EventModel, ExternalId

#: Hard upper bound on k in the schema; settings.max_k may lower it.
SCHEMA_MAX_K = 1000
#: Version of the request/response/explanation schemas in this module (the other events are at
#: ``EVENT_SCHEMA_VERSION``): 2 added item fields, ``score_scale`` and ``Explanation``.
RECOMMEND_SCHEMA_VERSION = 2

#: What an answer may carry per item besides its id and score.
ItemField = Literal["title", "categories"]
ITEM_FIELDS: tuple[ItemField, ...] = ("title", "categories")

#: What a score means. ``cosine``: the model's, the inner product of the unit user and item
#: vectors (-1..1; the exploration bonus is part of it, see ``Explanation.parts``).
#: ``interactions``: a replica's popularity, interactions with the item it has read.
#: ``decayed_interactions``: the worker's popularity, interactions with a half-life
#: (``EngineConfig.popularity_half_life``). Popularity scores are counts, not comparable with
#: cosines: a client that mixes both lists compares ranks, not scores.
ScoreScale = Literal["cosine", "interactions", "decayed_interactions"]


class Filters(EventModel):
    """Business filters applied after retrieval (and seen-item exclusion)."""

    exclude_items: list[ExternalId] = Field(default_factory=list, max_length=10_000)
    include_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_categories: list[str] = Field(default_factory=list, max_length=100)
    exclude_creators: list[str] = Field(default_factory=list, max_length=100)


def _absent(value: object) -> bool:
    return value is None


class _RecommendModel(EventModel):
    schema_version: int = Field(default=RECOMMEND_SCHEMA_VERSION, ge=1, le=RECOMMEND_SCHEMA_VERSION)


class RecommendRequest(_RecommendModel):
    request_id: ExternalId | None = None
    user_id: ExternalId
    k: int = Field(default=10, ge=1, le=SCHEMA_MAX_K)
    exclude_seen: bool = True
    filters: Filters = Field(default_factory=Filters)
    context: dict[str, str | float | int | bool] = Field(default_factory=dict, max_length=64)
    reply_to: str | None = Field(default=None, max_length=249)
    #: Item fields the answer carries besides id and score (``[]``: ids and scores only, the cheapest).
    fields: list[ItemField] = Field(default_factory=lambda: list(ITEM_FIELDS), max_length=len(ITEM_FIELDS))


class ScoredItem(_RecommendModel):
    """One recommended item. ``title``/``categories`` are ``None`` when the request's ``fields``
    left them out, and are then not written at all (an item without a title has no ``title``)."""

    item_id: str
    score: float
    title: str | None = Field(default=None, exclude_if=_absent)
    categories: list[str] | None = Field(default=None, exclude_if=_absent)


class RecommendResponse(_RecommendModel):
    request_id: str | None = None
    user_id: str
    items: list[ScoredItem]
    #: "model": user tower + index; "popularity": fallback (unknown user, index not ready).
    source: Literal["model", "popularity"]
    fallback_reason: str | None = None
    model_version: int
    served_at_ms: int
    #: The scale of every ``score`` in ``items`` (``None`` only in schema-version-1 answers).
    score_scale: ScoreScale | None = None


def score_scale(source: Literal["model", "popularity"], popularity: ScoreScale) -> ScoreScale:
    """The scale of an answer's scores: the model's cosine, or the answering process's popularity."""
    return "cosine" if source == "model" else popularity


class ScoreParts(_RecommendModel):
    """A model score split into what adds up to it: ``model + exploration == score``.

    ``model``: the towers' match of user and item (the user vector against the item tower's
    output). ``exploration``: the optimism given to items with few interactions (the bonus
    channel of the item vector, ``TowerConfig.explore_bonus``); it shrinks as the item is
    interacted with.
    """

    model: float
    exploration: float


class HistoryNeighbour(_RecommendModel):
    """An item in the user's recent history, by how close the item tower places it to the explained item."""

    item_id: str
    title: str | None = None
    #: Cosine of the two items' tower outputs (-1..1).
    similarity: float


class Explanation(_RecommendModel):
    """Why an item is, or is not, in a user's answer (``GET /explain/{user_id}/{item_id}``).

    The answer is the one ``/recommend`` gives for the same query parameters now; ``rank`` is
    the item's place in it. ``model_score``/``parts`` are the model's view of the pair, whatever the
    answer's source; ``None`` where the model cannot score it (no version yet, an item the
    version lacks, a user it cannot embed). ``filtered_by`` names each reason the answer leaves
    the item out: ``seen`` (the user interacted with it and ``exclude_seen`` is on),
    ``exclude_items``, ``include_categories``, ``exclude_categories``, ``exclude_creators``,
    ``not live`` (unknown or deleted).
    """

    user_id: str
    item_id: str
    title: str | None = None
    categories: list[str] = Field(default_factory=list)
    creator: str | None = None
    model_version: int
    #: The answer's source and fallback reason for this query (as ``/recommend`` says them).
    source: Literal["model", "popularity"]
    fallback_reason: str | None = None
    #: 1-based place of the item in the answer of ``k`` items, ``None`` if it is not in it.
    rank: int | None = None
    k: int
    #: The item's score in the answer (on ``score_scale``), ``None`` if it is not in it.
    answer_score: float | None = None
    score_scale: ScoreScale
    #: The model's score of the pair (cosine) and its parts, whatever the answer's source.
    model_score: float | None = None
    parts: ScoreParts | None = None
    filtered_by: list[str] = Field(default_factory=list)
    #: The user's recent items nearest to this one (most similar first), as the model sees them.
    nearest_history: list[HistoryNeighbour] = Field(default_factory=list)
