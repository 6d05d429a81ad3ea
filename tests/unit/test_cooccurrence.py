"""The co-occurrence peer of the quality benchmark scores exactly its formula.

``s(j) = sum_k decay**(k-1) * C[h_k, j] / (n[h_k]**alpha * n[j]**beta)``, with ``C`` the pairs one
user took within ``window`` positions of each other and ``h_1..h_L`` the user's last items. The
reference below recounts everything from the raw sequences, with no shared code.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from bench.baselines import CoOccurrence
from towerstream.events import Interaction

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

#: user -> items in the order taken; a repeat (u1 takes a again) and users sharing pairs.
STREAM = [("u1", "a"), ("u2", "b"), ("u1", "b"), ("u1", "c"), ("u2", "c"), ("u3", "a"), ("u1", "d"),
          ("u2", "a"), ("u1", "e"), ("u3", "c"), ("u1", "a"), ("u3", "e"), ("u2", "d"), ("u1", "f")]


def reference(window: int, last: int, decay: float, alpha: float, beta: float, user: str) -> dict[str, float]:
    seqs: dict[str, list[str]] = {}
    for u, i in STREAM:
        seqs.setdefault(u, []).append(i)
    n = Counter(i for _, i in STREAM)
    pairs: Counter[tuple[str, str]] = Counter()
    for seq in seqs.values():
        for p, j in enumerate(seq):
            for h in seq[max(0, p - window):p]:
                if h != j:
                    pairs[(h, j)] += 1
                    pairs[(j, h)] += 1
    hist = seqs[user][::-1][:last]
    return {j: sum(decay**k * pairs[(h, j)] / (n[h] ** alpha * n[j] ** beta) for k, h in enumerate(hist))
            for j in sorted(n)}


@pytest.mark.parametrize("window,last,decay,alpha,beta", [(10, 10, 0.8, 0.5, 0.2), (2, 3, 0.5, 1.0, 0.0)])
def test_scores_equal_the_formula_on_a_hand_made_stream(
    window: int, last: int, decay: float, alpha: float, beta: float
) -> None:
    model = CoOccurrence(window=window, last=last, decay=decay, alpha=alpha, beta=beta)
    for n, (u, i) in enumerate(STREAM):  # one event at a time, as evaluate's rounds do
        model.observe([Interaction(event_id=f"e{n}", user_id=u, item_id=i, ts=T0 + timedelta(seconds=n))])
    users = ["u1", "u2", "u3"]
    scores = model._scores(users)
    for row, u in enumerate(users):
        want = reference(window, last, decay, alpha, beta, u)
        got = {model.cat.ids[r]: float(scores[row, r]) for r in range(len(model.cat.ids))}
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert any(v > 0 for v in want.values())


def test_recommendations_rank_by_score_without_seen_items() -> None:
    model = CoOccurrence()
    for n, (u, i) in enumerate(STREAM):
        model.observe([Interaction(event_id=f"e{n}", user_id=u, item_id=i, ts=T0 + timedelta(seconds=n))])
    want = reference(10, 10, 0.8, 0.5, 0.2, "u3")
    unseen = {j: s for j, s in want.items() if j not in {"a", "c", "e"}}
    got = model.recommend_many(["u3"], k=3)[0]
    assert [j for j, _ in got] == sorted(unseen, key=lambda j: (-unseen[j], "abcdef".index(j)))
    assert np.allclose([s for _, s in got], [unseen[j] for j, _ in got])
