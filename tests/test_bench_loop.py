"""bench_loop's printout: every goal with its figure, mean and spread over seeds, and active
learning against random. The runs here are made-up DemoResults (the real ones take minutes
each: `python -m benchmarks loop`); the figures they print are checked against them."""

from __future__ import annotations

import json
from dataclasses import asdict

from benchmarks.bench_loop import StrategyRuns, summarize
from pipelines.demo import DemoResult, ProbeResult, RoundResult

CLASSES = ["background", "grass", "broadleaf", "rosette"]


def demo(seed: int, strategy: str, champion: list[float], probe: list[float]) -> DemoResult:
    rounds = []
    for r, miou in enumerate(champion):
        rounds.append(
            RoundResult(
                round=r,
                data="seed (ground truth)" if r == 0 else "refined by the simulated annotator",
                images_refined=8 if r == 0 else 12,
                labelled_images=8 + 12 * r,
                correction_iou=None if r == 0 else 0.5,
                changed_share=None if r == 0 else 0.1,
                probe=None if r == 0 else ProbeResult(r, 24, probe[r - 1], 1 - 10 * probe[r - 1]),
                test_mean_iou=miou,
                per_class_iou={},
                split_hash="h",
                model_version=r + 1,
                promoted=True,
                reason="",
                train_run_id=None,
                champion_test_mean_iou=miou,
                champion_per_class_iou=dict.fromkeys(CLASSES, miou),
            )
        )
    return DemoResult(f"s{seed}", seed, strategy, "w", "m", "ui", "r.html", "s.json", 1.0, rounds)


def test_summary_prints_every_goal_with_mean_and_spread(tmp_path):
    runs = {
        "uncertainty": StrategyRuns(
            "uncertainty",
            [
                demo(0, "uncertainty", [0.4, 0.6, 0.7], [0.05, 0.025]),
                demo(1, "uncertainty", [0.4, 0.5, 0.6], [0.05, 0.03]),
                demo(2, "uncertainty", [0.4, 0.55, 0.65], [0.05, 0.02]),
            ],
        ),
        "random": StrategyRuns(
            "random",
            [
                demo(0, "random", [0.4, 0.5, 0.6], [0.05, 0.04]),
                demo(1, "random", [0.4, 0.5, 0.55], [0.05, 0.04]),
                demo(2, "random", [0.4, 0.5, 0.6], [0.05, 0.04]),
            ],
        ),
    }
    lines, judged = summarize(runs, "uncertainty")
    text = "\n".join(lines)
    # Per round: mean +- sd [min..max] of the champion's test mIoU and of the probe effort.
    assert "    2       32  0.650 +- 0.050 [0.600..0.700]" in text
    assert "2.50% +- 0.50% [2.00%..3.00%]" in text
    assert "final champion test IoU per class: background 0.650 +- 0.050" in text
    goals = [goal for goal, _, _ in judged]
    assert goals[0].startswith("uncertainty: champion test mIoU rises every round")
    assert [met for _, _, met in judged] == [True, True, True, True, True, True]
    assert "0.400 -> 0.550 -> 0.650 (final +0.250)" in judged[0][1]
    assert "(50% of round 1)" in judged[1][1]
    # Active learning against random, paired by seed, and who wins.
    assert judged[4][0] == "uncertainty vs random (same seeds, same budget)"
    assert judged[4][1].startswith("final champion mIoU +0.067 +- 0.029")
    assert "uncertainty 0.650, random 0.583 (best: uncertainty)" in judged[5][1]
    assert text.count("met      ") == 6

    # A finished run reads back from its summary.json (`--reuse`).
    path = tmp_path / "summary.json"
    first = runs["random"].runs[0]
    path.write_text(json.dumps(asdict(first)))
    assert DemoResult.load(path) == first


def test_the_default_strategy_loses_to_random():
    runs = {
        "uncertainty": StrategyRuns("uncertainty", [demo(0, "uncertainty", [0.4, 0.5], [0.05])]),
        "random": StrategyRuns("random", [demo(0, "random", [0.4, 0.6], [0.05])]),
    }
    _, judged = summarize(runs, "uncertainty")
    vs_random, best = judged[-2:]
    assert not vs_random[2] and not best[2] and "(best: random)" in best[1]
