"""The field-collection pool: bursts of near-duplicate shots, sessions that differ, a rare weed."""

from __future__ import annotations

import numpy as np
import pytest

from components.core.errors import SegloopError
from components.core.images import load_mask, load_rgb
from pipelines.demo.synthetic import make_dataset
from pipelines.demo.synthetic_field import SHOTS, layout, render_field


def test_layout_singles_then_bursts_deterministic():
    shots = layout(3, 200, singles=10)
    assert [s.shots for s in shots[:10]] == [1] * 10
    assert len({s.session for s in shots[:10]}) == 10
    sizes = {s.session: s.shots for s in shots[10:-10]}
    assert all(SHOTS[0] <= v <= SHOTS[1] for v in sizes.values())
    assert layout(3, 50, singles=10) == shots[:50]  # image i does not depend on n


def test_shots_of_a_session_are_near_duplicates_and_sessions_differ():
    shots = layout(0, 120, singles=0)
    images = [render_field(0, s, 64, 64)[0].astype(np.float32) for s in shots]
    same, other = [], []
    for i in range(len(shots) - 1):
        d = float(np.abs(images[i].mean((0, 1)) - images[i + 1].mean((0, 1))).mean())
        (same if shots[i].session == shots[i + 1].session else other).append(d)
    # Mean colour: shots of a session within a few levels, sessions far apart (light, soil).
    assert np.median(same) * 3 < np.median(other)


def test_rare_weed_in_at_most_about_ten_percent_of_the_pool():
    for seed in (0, 1, 2):
        shots = layout(seed, 400, singles=32)
        rare = [(render_field(seed, s, 48, 48, 32)[1] == 3).any() for s in shots]
        assert 0.02 <= np.mean(rare[32:]) <= 0.12
        assert np.mean(rare[:32]) >= 0.15  # the curated singles show it


def test_make_dataset_field_pool_records_sessions(tmp_path):
    result = make_dataset(
        tmp_path / "data",
        20,
        seed=2,
        db_url=f"sqlite:///{tmp_path / 'db'}",
        size=(32, 32),
        pool="field",
        singles=4,
    )
    batches = [r["batch_id"] for r in result.records]
    assert len(set(batches[:4])) == 4 and len(set(batches[4:])) < 16
    again = make_dataset(
        tmp_path / "again",
        20,
        seed=2,
        db_url=f"sqlite:///{tmp_path / 'db2'}",
        size=(32, 32),
        pool="field",
        singles=4,
    )
    for a, b in zip(result.records, again.records, strict=True):
        assert np.array_equal(load_rgb(a["image_uri"]), load_rgb(b["image_uri"]))
        assert np.array_equal(load_mask(a["mask_uri"]), load_mask(b["mask_uri"]))


def test_field_pool_refuses_random_sizes_and_large(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'db'}"
    with pytest.raises(SegloopError, match="one fixed --size"):
        make_dataset(tmp_path / "a", 4, db_url=db_url, size=((32, 64), (32, 64)), pool="field")
    with pytest.raises(SegloopError, match="plain pool only"):
        make_dataset(tmp_path / "b", 4, db_url=db_url, size=(32, 32), large=1, pool="field")
    with pytest.raises(SegloopError, match="plain or field"):
        make_dataset(tmp_path / "c", 4, db_url=db_url, pool="bursty")
