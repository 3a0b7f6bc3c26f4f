"""The loop's yield goals: verdicts on a run's (or the seeds' mean) figures."""

from __future__ import annotations

from pipelines.demo.loop_goals import LoopFigures, verdicts

CLASSES = {"background": 0.98, "grass": 0.55, "broadleaf": 0.8, "rosette": 0.7}


def test_a_loop_that_pays_off_meets_every_goal():
    figures = LoopFigures([0.5, 0.6, 0.7], [0.03, 0.015], [0.6, 0.75], CLASSES)
    lines = [v.line() for v in verdicts(figures)]
    assert all(line.startswith("met ") for line in lines), lines
    assert "0.500 -> 0.600 -> 0.700 (final +0.200)" in lines[0]
    assert "3.00% -> 1.50% of pixels changed (50% of round 1)" in lines[1]
    assert "(lowest: grass)" in lines[3]


def test_each_goal_fails_on_its_own():
    flat = verdicts(LoopFigures([0.5, 0.5, 0.7], [0.03, 0.015], [0.6, 0.75], CLASSES))
    assert [v.met for v in flat] == [False, True, True, True]  # no rise in round 1
    small = verdicts(LoopFigures([0.5, 0.55, 0.6], [0.03, 0.015], [0.6, 0.75], CLASSES))
    assert not small[0].met  # rises, but only +0.10
    effort = verdicts(LoopFigures([0.5, 0.6, 0.7], [0.03, 0.02], [0.6, 0.59], CLASSES))
    assert [v.met for v in effort] == [True, False, False, True]  # 67% of round 1; IoU falls
    weak = verdicts(
        LoopFigures([0.5, 0.6, 0.7], [0.03, 0.01], [0.6, 0.7], {**CLASSES, "grass": 0.1})
    )
    assert not weak[3].met and weak[3].line().startswith("NOT met")


def test_one_round_cannot_show_the_effort_falling():
    (champion, effort, classes) = verdicts(LoopFigures([0.5, 0.7], [0.03], [0.6], CLASSES))
    assert champion.met and not effort.met and "needs at least 2 rounds" in effort.figure
