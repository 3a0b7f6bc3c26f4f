"""bench_loop's printout: every goal with its figure, mean and spread over seeds, and active
learning against random. The runs here are made-up DemoResults (the real ones take minutes
each: `python -m benchmarks loop`); the figures they print are checked against them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from benchmarks.bench_loop import (
    StrategyRuns,
    al_goals,
    goal_pass_counts,
    label_shares,
    labels_to_reach,
    paired_interval,
    summarize,
)
from pipelines.demo.run import DemoResult, ProbeResult, RoundResult

CLASSES = ["background", "grass", "broadleaf", "rosette"]


def demo(
    seed: int, strategy: str, champion: list[float], probe: list[float], rare: float | None = None
) -> DemoResult:
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
                champion_per_class_iou=dict.fromkeys(CLASSES, miou)
                | ({} if rare is None else {"rosette": rare}),
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
    assert [met for _, _, met in judged] == [True] * 6 + [False, False, True]
    assert "0.400 -> 0.550 -> 0.650 (final +0.250)" in judged[0][1]
    assert "(50% of round 1)" in judged[1][1]
    # Active learning against random, paired by seed, and who wins.
    assert judged[4][0] == "uncertainty vs random (same seeds, same budget)"
    assert judged[4][1].startswith("final champion mIoU +0.067 +- 0.029")
    assert "uncertainty 0.650, random 0.583 (best: uncertainty)" in judged[5][1]
    assert text.count("met      ") == 7
    # Run by run, and paired with random by seed.
    assert "  3/3 seeds  champion test mIoU rises every round" in text
    assert "uncertainty        seed 0 62%, seed 1 81%, seed 2 81%" in text
    assert (
        "uncertainty        0: +0.100, 1: +0.050, 2: +0.050; mean +0.067 [-0.005, +0.138]" in text
    )

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
    by_goal = {goal: (figure, met) for goal, figure, met in judged}
    vs_random = ("", *by_goal["uncertainty vs random (same seeds, same budget)"])
    best_goal = next(g for g in by_goal if g.startswith("the default strategy"))
    best = ("", *by_goal[best_goal])
    assert not vs_random[2] and not best[2] and "(best: random)" in best[1]


def test_labels_to_reach_reads_the_curve_linearly_between_rounds():
    labelled = [8, 20, 32, 44]
    assert labels_to_reach(labelled, [0.4, 0.6, 0.7, 0.8], 0.4) == 8
    assert labels_to_reach(labelled, [0.4, 0.6, 0.7, 0.8], 0.65) == pytest.approx(26.0)
    assert labels_to_reach(labelled, [0.4, 0.6, 0.7, 0.8], 0.8) == pytest.approx(44.0)
    assert labels_to_reach(labelled, [0.4, 0.6, 0.7, 0.8], 0.81) is None
    # The first crossing counts, even if the curve dips later.
    assert labels_to_reach(labelled, [0.4, 0.7, 0.6, 0.8], 0.7) == pytest.approx(20.0)


def test_paired_interval_is_the_t_interval():
    mean, low, high = paired_interval([0.01, 0.02, 0.03])
    # sd 0.01, se 0.01/sqrt(3), t(0.975, 2) = 4.3027
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert mean == pytest.approx(0.02)
    assert (low, high) == pytest.approx((0.02 - half, 0.02 + half), abs=1e-6)
    assert paired_interval([0.05, 0.05]) == (0.05, 0.05, 0.05)
    single = paired_interval([0.1])
    assert single[0] == 0.1 and math.isnan(single[1]) and math.isnan(single[2])


def test_goal_pass_counts_per_seed():
    runs = [
        demo(0, "u", [0.4, 0.5, 0.6], [0.05, 0.02]),  # every goal
        demo(1, "u", [0.4, 0.5, 0.5], [0.05, 0.04]),  # flat champion, effort 80%
        demo(2, "u", [0.4, 0.6, 0.7], [0.05, 0.03]),  # effort 60%: met
    ]
    counts = [(p, t, m) for _, p, t, m in goal_pass_counts(runs)]
    # champion rises; probe effort <= 60%; probe IoU rises; every class >= 0.5
    assert counts == [(2, 3, [1]), (2, 3, [1]), (3, 3, []), (3, 3, [])]


def test_al_goals_paired_by_seed():
    runs = {
        "kc": StrategyRuns(
            "kc",
            [
                demo(0, "kc", [0.4, 0.7, 0.78], [0.05, 0.02], rare=0.6),
                demo(1, "kc", [0.4, 0.6, 0.72], [0.05, 0.02], rare=0.5),
                demo(2, "kc", [0.4, 0.5, 0.66], [0.05, 0.02], rare=0.2),
            ],
        ),
        "random": StrategyRuns(
            "random",
            [
                demo(0, "random", [0.4, 0.6, 0.7], [0.05, 0.02], rare=0.4),
                demo(1, "random", [0.4, 0.6, 0.65], [0.05, 0.02], rare=0.4),
                demo(2, "random", [0.4, 0.5, 0.6], [0.05, 0.02], rare=0.3),
            ],
        ),
    }
    shares = label_shares(runs, "kc")
    # random ends at 32 labels, at 0.70, 0.65, 0.60; kc reaches them at 20, 25 and 27.5.
    assert shares[0] == pytest.approx(20 / 32)
    assert shares[1] == pytest.approx(25 / 32)
    assert shares[2] == pytest.approx(27.5 / 32)
    efficiency, ahead, rare = al_goals(runs, "kc")
    assert "median 78%; reached on 3 of 3 seeds" in efficiency[1] and not efficiency[2]
    # Paired differences +0.08, +0.07, +0.06: mean +0.070, sd 0.01, t interval above 0.
    assert ahead[1] == "+0.070 [+0.045, +0.095] over 3 seeds" and ahead[2]
    assert "ahead on 2 of 3 seeds" in rare[1] and rare[2]


def test_options_after_the_benchmark_names_reach_the_scripts():
    from benchmarks.__main__ import split_args

    assert split_args(["loop", "--seeds", "3", "4"]) == (["loop"], ["--seeds", "3", "4"])
    assert split_args(["query", "--", "--rows", "9"]) == (["query"], ["--rows", "9"])
    assert split_args(["infer", "train"]) == (["infer", "train"], [])
    assert split_args([]) == ([], [])
