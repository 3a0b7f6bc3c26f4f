"""Selection in the model's feature space, with a real small model on tiny field images.

The model is the demo's tiny Unet (resnet18 cut to 3 stages, thin decoder) with random
weights: its encoder features are what `infer` writes as each image's embedding. The images
are the synthetic field-collection pool: plot sessions of near-duplicate shots (their
`batch_id` names the session)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from components.core import artifacts
from components.core.checkpoint import save_checkpoint
from components.core.errors import SegloopError
from components.core.model import ModelSpec, build_from_spec
from components.infer.stage import run_infer
from components.select.embedding import k_center
from components.select.stage import run_select
from pipelines.config import load_config
from pipelines.demo.synthetic import LABELS, make_dataset

SIZE = 32


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """A window of the field pool (bursts of 3-8 shots), pre-annotated by a tiny real model."""
    root = tmp_path_factory.mktemp("window")
    synth = make_dataset(
        root / "data",
        40,
        seed=5,
        db_url=f"sqlite:///{root / 'db'}",
        size=(SIZE, SIZE),
        pool="field",
    )
    spec = ModelSpec(
        arch="Unet",
        encoder_name="resnet18",
        classes=LABELS.num_classes,
        labels=LABELS.labels,
        model_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]},
        tile_size=SIZE,
        pad_divisor=8,
    )
    torch.manual_seed(0)
    save_checkpoint(build_from_spec(spec).eval(), spec, root / "model")
    records = root / "records.jsonl"
    artifacts.write_jsonl(records, synth.records)
    cfg = load_config(extra={"infer": {"num_workers": 0, "device": "cpu", "coco": False}})
    run_infer(cfg, records=str(records), out=str(root / "pred"), model=str(root / "model"))
    session = {r["image_id"]: r["batch_id"] for r in synth.records}
    return root / "pred", session, str(records)


def pick(pred, out, records=None, **select):
    cfg = load_config(None, [f"select.{k}={v}" for k, v in select.items()])
    run_select(cfg, predictions=str(pred), out=str(out), records=records)
    return [row["record_id"] for row in artifacts.read_jsonl(out / "selected.jsonl")]


def test_infer_writes_one_embedding_per_image(window):
    pred, session, _ = window
    entries = artifacts.Manifest(pred).ok()
    assert len(entries) == len(session)
    sizes = {len(e["embedding"]) for e in entries}
    assert sizes == {128}  # resnet18's third stage: 128 channels
    assert all(np.isfinite(e["embedding"]).all() for e in entries)


def test_kcenter_never_picks_two_shots_of_one_burst_while_others_remain(window, tmp_path):
    pred, session, records = window
    sessions = len(set(session.values()))
    assert sessions >= 7
    for budget in (3, 5, sessions):
        picked = pick(
            pred,
            tmp_path / f"k{budget}",
            records,
            strategy="kcenter",
            budget=budget,
            group_by="batch_id",
        )
        assert len(picked) == budget
        counts = Counter(session[p] for p in picked)
        assert max(counts.values()) == 1, counts
    # Embeddings alone (no session column) spread a small budget over distinct sessions too.
    alone = pick(pred, tmp_path / "alone", records, strategy="kcenter", budget=3)
    assert len({session[p] for p in alone}) == 3
    # Plain uncertainty, on the same window, spends its budget on near-copies.
    top = pick(pred, tmp_path / "u", records, strategy="uncertainty", budget=sessions)
    assert len({session[p] for p in top}) < sessions


def test_uncertain_kcenter_covers_the_sessions_among_its_candidates(window, tmp_path):
    pred, session, records = window
    entries = sorted(
        artifacts.Manifest(pred).ok(),
        key=lambda e: (-e["uncertainty"]["entropy"], str(e["record_id"])),
    )
    budget, factor = 4, 3
    candidates = {session[e["record_id"]] for e in entries[: budget * factor]}
    picked = pick(
        pred,
        tmp_path / "m",
        records,
        strategy="uncertain_kcenter",
        budget=budget,
        candidate_factor=factor,
        group_by="batch_id",
    )
    assert picked[0] == entries[0]["record_id"]  # the most uncertain image first
    assert len({session[p] for p in picked}) == min(budget, len(candidates))


def test_embedding_strategies_are_deterministic_under_a_seed(window, tmp_path):
    pred, _, _ = window
    for strategy in ("kcenter", "uncertain_kcenter", "badge"):
        a = pick(pred, tmp_path / f"{strategy}-a", strategy=strategy, budget=6, seed=3)
        b = pick(pred, tmp_path / f"{strategy}-b", strategy=strategy, budget=6, seed=3)
        assert a == b and len(set(a)) == 6
    other = pick(pred, tmp_path / "badge-c", strategy="badge", budget=6, seed=4)
    assert len(set(other)) == 6


def test_k_center_on_fixed_points():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0], [0.0, 3.0]])
    picked = [i for i, _ in k_center(x, 3, first=0)]
    assert picked == [0, 3, 4]
    # Sessions: a second pick from {0, 1} waits until {2, 3} and {4} have one.
    groups = ["a", "a", "b", "b", "c"]
    assert [i for i, _ in k_center(x, 4, first=1, groups=groups)] == [1, 3, 4, 0]


def test_missing_embeddings_is_a_clear_error(window, tmp_path):
    pred, _, _ = window
    bare = tmp_path / "bare"
    manifest = artifacts.Manifest(bare)
    for entry in artifacts.Manifest(pred).ok():
        manifest.add({k: v for k, v in entry.items() if k != "embedding"})
    with pytest.raises(SegloopError, match="has no embedding; run `segloop infer`"):
        pick(bare, tmp_path / "out", strategy="kcenter", budget=2)
