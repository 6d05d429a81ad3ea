"""The exploration bonus lifts an item only for its first ``explore_until`` interactions.

The item's index vector carries the bonus in its last coordinate (``[sqrt(1 - b^2) v, b]``), so
the window is what search sees: the batch that gives an item its ``explore_until``-th
interaction must also re-embed it without the bonus.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from towers import TowerConfig, TwoTowerTrainer
from towerstream.engine import Engine, EngineConfig
from towerstream.events import Interaction, ItemUpsert

TS = 1_700_000_000_000


def item(i: int) -> ItemUpsert:
    return ItemUpsert(item_id=f"i{i}", title=f"title {i}", categories=[f"genre{i % 3}"], ts=TS)


def click(n: int, u: int, i: int) -> Interaction:
    return Interaction(event_id=f"e{n}", user_id=f"u{u}", item_id=f"i{i}", kind="click", ts=TS + n)


@pytest.mark.parametrize("power,until", [(0.0, 5), (0.5, 3), (0.5, 0)])
def test_the_bonus_follows_its_formula_inside_the_window_and_is_zero_after(power: float, until: int) -> None:
    tr = TwoTowerTrainer(TowerConfig(dim=8, hidden=8, device="cpu", explore_bonus=0.1, explore_power=power,
                                     explore_until=until))
    rows = np.arange(8)
    tr.ensure_items(7)
    tr.item_count[rows] = rows  # row r has had r interactions
    want = np.where((rows < until) | (until == 0), 0.1 / (1.0 + rows) ** power, 0.0)
    np.testing.assert_allclose(tr.exploration_bonus(rows), want, rtol=1e-6)


def test_an_item_leaves_the_window_in_the_batch_that_takes_it_there(tmp_path: Path) -> None:
    cfg = EngineConfig(tower=TowerConfig(dim=16, hidden=16, uniform_negatives=4, seed=3, explore_bonus=0.07,
                                         explore_power=0.0, explore_until=5), reembed_per_learn=0)
    eng = Engine.open(tmp_path, cfg)
    try:
        eng.apply_items([item(i) for i in range(6)])
        # Item 0 gets 4 interactions, item 1 one: both still inside the window.
        eng.learn([click(n, n, 0) for n in range(4)] + [click(10, 10, 1)])

        def bonus(i: int) -> float:  # the index vector's last coordinate
            return float(eng.index.get(np.array([eng.items.get(f"i{i}")]))[0, -1])

        assert bonus(0) == pytest.approx(0.07, abs=1e-6) and bonus(1) == pytest.approx(0.07, abs=1e-6)
        assert bonus(5) == pytest.approx(0.07, abs=1e-6)  # never taken
        eng.learn([click(20, 20, 0)])  # the 5th: out of the window, with rolling re-embeds off
        assert bonus(0) == 0.0
        assert bonus(1) == pytest.approx(0.07, abs=1e-6)
    finally:
        eng.close()
