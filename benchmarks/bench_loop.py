"""Does the loop pay off? The demo's loop over several seeds and selection strategies.

    python -m benchmarks loop                  # seeds 0-4 x (default, uncertainty, random), field pool
    python benchmarks/bench_loop.py --seeds 0 1 2 3 --strategies uncertainty random
    python benchmarks/bench_loop.py --rounds 3 --out runs/bench-loop
    python benchmarks/bench_loop.py --out runs/bench-loop/<time> --reuse   # print it again

Each (seed, strategy) is one whole `segloop demo` (pipelines.demo.run.run_demo) on the embedded
stack: the same synthetic dataset, seed set, probe set, test set, windows, budget and training
per seed; only `select.strategy` differs. The figures are the demo's own (pipelines.demo.loop_goals):
the champion's test mIoU per round, the probe effort (pixels a person would change on a fixed
probe set, pre-annotated by the champion of the round) and probe IoU per round, the final
champion's per-class test IoU. It prints, per strategy, the mean and the spread (standard
deviation, and min..max) over seeds; the goals judged on the means of the default strategy
(`select.strategy` in the config, else the settings' default); and active learning against
random selection: label-efficiency curves (champion test mIoU against labelled images, probe
effort per round) and who wins. Then, per seed: each goal's pass count over the seeds (a
user runs one loop, not the mean), label efficiency (labels each strategy needs to reach
random's final champion mIoU, read off its curve, as a share of random's labels), and the
paired difference to random with a 95% t interval; the active-learning goals are judged on
those. `--pool field` (default) is the demo's field-collection pool, `--pool plain` the
independent images. The curves and verdicts also go into an HTML loop report.
Each demo's console output goes to <out>/<strategy>-seed<N>/console.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rows import record  # noqa: E402
from components.loop_report.page import Curve, write_loop_report  # noqa: E402
from components.select.settings import SelectSettings  # noqa: E402
from pipelines.demo.loop_goals import LoopFigures, verdicts  # noqa: E402
from pipelines.demo.run import DemoResult, quiet_console, round_summary, run_demo  # noqa: E402
from pipelines.demo.synthetic import LABELS  # noqa: E402

DEFAULT_STRATEGY = SelectSettings().strategy


@dataclass
class Spread:
    mean: float
    sd: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), sd, min(values), max(values))

    def text(self, pattern: str = "{:.3f}") -> str:
        return (
            f"{pattern.format(self.mean)} +- {pattern.replace('+', '').format(self.sd)} "
            f"[{pattern.format(self.low)}..{pattern.format(self.high)}]"
        )


def per_round(values: list[list[float]]) -> list[Spread]:
    """Spread per round over seeds (every seed has the same rounds)."""
    return [Spread.of(list(column)) for column in zip(*values, strict=True)]


@dataclass
class StrategyRuns:
    strategy: str
    runs: list[DemoResult]

    def figures(self) -> list[LoopFigures]:
        return [r.figures() for r in self.runs]

    def mean_figures(self) -> LoopFigures:
        figs = self.figures()
        classes = figs[0].class_iou
        return LoopFigures(
            champion_miou=[s.mean for s in per_round([f.champion_miou for f in figs])],
            probe_changed=[s.mean for s in per_round([f.probe_changed for f in figs])],
            probe_iou=[s.mean for s in per_round([f.probe_iou for f in figs])],
            class_iou={k: statistics.fmean(f.class_iou.get(k, 0.0) for f in figs) for k in classes},
        )

    def curve(self) -> Curve:
        figs = self.figures()
        miou = per_round([f.champion_miou for f in figs])
        probe = per_round([f.probe_changed for f in figs])
        first = self.runs[0]
        return Curve(
            name=self.strategy,
            labelled=[r.labelled_images for r in first.rounds],
            champion_miou=[s.mean for s in miou],
            probe_rounds=[r.round for r in first.rounds if r.probe is not None],
            probe_changed=[s.mean for s in probe],
            miou_spread=[s.sd for s in miou],
            probe_spread=[s.sd for s in probe],
        )


def run_all(args) -> dict[str, StrategyRuns]:
    out: dict[str, StrategyRuns] = {s: StrategyRuns(s, []) for s in args.strategies}
    for seed in args.seeds:
        for strategy in args.strategies:
            work = Path(args.out) / f"{strategy}-seed{seed}"
            if args.reuse and (work / "summary.json").is_file():
                out[strategy].runs.append(DemoResult.load(work / "summary.json"))
                print(f"seed {seed} {strategy:<12} (finished earlier: {work})", flush=True)
                continue
            work.mkdir(parents=True, exist_ok=True)
            start = time.monotonic()
            with open(work / "console.txt", "w") as console, contextlib.redirect_stdout(console):
                demo = run_demo(
                    overrides=[f"select.strategy={strategy}", *args.override],
                    rounds=args.rounds,
                    seed=seed,
                    workdir=work,
                    echo=print,
                    pool=args.pool,
                    window=args.window,
                )
            out[strategy].runs.append(demo)
            f = demo.figures()
            print(
                f"seed {seed} {strategy:<12} champion mIoU "
                + " -> ".join(f"{v:.3f}" for v in f.champion_miou)
                + "; probe px changed "
                + " -> ".join(f"{v:.2%}" for v in f.probe_changed)
                + f" ({time.monotonic() - start:.0f} s, {work})",
                flush=True,
            )
    return out


def strategy_table(runs: StrategyRuns) -> list[str]:
    """Per round: labelled images, champion test mIoU, probe effort and IoU (mean +- sd
    [min..max] over seeds); then the final champion's per-class test IoU."""
    figs = runs.figures()
    first = runs.runs[0]
    lines = [
        f"{runs.strategy}: mean +- sd [min..max] over {len(figs)} seeds",
        f"{'round':>5} {'labelled':>8}  {'champion test mIoU':<28} {'probe px changed':<30} "
        "probe IoU",
    ]
    miou = per_round([f.champion_miou for f in figs])
    probe = per_round([f.probe_changed for f in figs])
    probe_iou = per_round([f.probe_iou for f in figs])
    probe_rounds = [r.round for r in first.rounds if r.probe is not None]
    for r, spread in zip(first.rounds, miou, strict=True):
        at = probe_rounds.index(r.round) if r.round in probe_rounds else None
        px = "-" if at is None else probe[at].text("{:.2%}")
        iou = "-" if at is None else probe_iou[at].text()
        lines.append(f"{r.round:>5} {r.labelled_images:>8}  {spread.text():<28} {px:<30} {iou}")
    classes = {
        name: Spread.of([f.class_iou.get(name, 0.0) for f in figs]) for name in figs[0].class_iou
    }
    lines.append(
        "final champion test IoU per class: "
        + "; ".join(f"{name} {spread.text()}" for name, spread in classes.items())
    )
    return lines


def compare(all_runs: dict[str, StrategyRuns], default: str) -> list[tuple[str, str, bool]]:
    """Active learning against random: final champion mIoU and last probe effort, paired by
    seed; the default strategy should be the best one."""
    lines = []
    finals = {s: [r.figures().champion_miou[-1] for r in runs.runs] for s, runs in all_runs.items()}
    efforts = {
        s: [r.figures().probe_changed[-1] for r in runs.runs] for s, runs in all_runs.items()
    }
    best = max(finals, key=lambda s: (statistics.fmean(finals[s]), s == default))
    if "random" in finals:
        for s in finals:
            if s == "random":
                continue
            diff = Spread.of([a - b for a, b in zip(finals[s], finals["random"], strict=True)])
            effort = Spread.of([a - b for a, b in zip(efforts[s], efforts["random"], strict=True)])
            lines.append(
                (
                    f"{s} vs random (same seeds, same budget)",
                    f"final champion mIoU {diff.text('{:+.3f}')}, last probe effort "
                    f"{effort.text('{:+.2%}')}",
                    diff.mean > 0,
                )
            )
    lines.append(
        (
            f"the default strategy ({default}) is the best by final champion mIoU",
            ", ".join(f"{s} {statistics.fmean(v):.3f}" for s, v in finals.items())
            + f" (best: {best})",
            best == default,
        )
    )
    return lines


# ---------------------------------------------------------------- per seed, paired with random

RARE_CLASS = "rosette"  # the field pool's rare weed (pipelines.demo.synthetic_field.RARE)
MAX_LABEL_SHARE = 0.70  # labels the default strategy may need to reach random's final mIoU


def goal_pass_counts(runs: list[DemoResult]) -> list[tuple[str, int, int, list[int]]]:
    """Each loop goal judged on each run: (goal, runs that met it, runs, seeds that missed)."""
    per_run = [(r.seed, verdicts(r.figures())) for r in runs]
    out = []
    for k, first in enumerate(per_run[0][1]):
        missed = [seed for seed, vs in per_run if not vs[k].met]
        out.append((first.goal, len(per_run) - len(missed), len(per_run), missed))
    return out


def labels_to_reach(labelled: list[int], miou: list[float], target: float) -> float | None:
    """Labelled images at which a label-efficiency curve first reaches `target`, linear
    between rounds; None when it never does."""
    for k, value in enumerate(miou):
        if value >= target:
            if k == 0:
                return float(labelled[0])
            x0, x1, y0, y1 = labelled[k - 1], labelled[k], miou[k - 1], miou[k]
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its t interval (scipy); nan bounds for one pair."""
    from scipy import stats

    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    sem = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if sem == 0:
        return mean, mean, mean
    low, high = stats.t.interval(level, len(diffs) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def _by_seed(runs: StrategyRuns) -> dict[int, DemoResult]:
    return {r.seed: r for r in runs.runs}


def label_shares(all_runs: dict[str, StrategyRuns], strategy: str) -> dict[int, float | None]:
    """Per seed: labels `strategy` needs to reach random's final champion mIoU, as a share of
    random's labels at its final round (None: not reached within the rounds run)."""
    out: dict[int, float | None] = {}
    randoms = _by_seed(all_runs["random"])
    for seed, run in _by_seed(all_runs[strategy]).items():
        if seed not in randoms:
            continue
        ref = randoms[seed]
        target = ref.figures().champion_miou[-1]
        needed = labels_to_reach(
            [r.labelled_images for r in run.rounds], run.figures().champion_miou, target
        )
        out[seed] = None if needed is None else needed / ref.rounds[-1].labelled_images
    return out


def label_efficiency_lines(all_runs: dict[str, StrategyRuns]) -> list[str]:
    lines = ["label efficiency: labels needed to reach random's final champion mIoU (per seed)"]
    for strategy in all_runs:
        shares = label_shares(all_runs, strategy)
        cells = ", ".join(
            f"seed {seed} {'not reached' if v is None else f'{v:.0%}'}"
            for seed, v in sorted(shares.items())
        )
        lines.append(f"  {strategy:<18} {cells}")
    return lines


def paired(all_runs: dict[str, StrategyRuns], strategy: str, figure) -> dict[int, float]:
    """Per seed: figure(strategy's run) - figure(random's run)."""
    randoms = _by_seed(all_runs["random"])
    return {
        seed: figure(run) - figure(randoms[seed])
        for seed, run in _by_seed(all_runs[strategy]).items()
        if seed in randoms
    }


def final_miou(run: DemoResult) -> float:
    return run.figures().champion_miou[-1]


def rare_iou(run: DemoResult) -> float:
    return run.figures().class_iou.get(RARE_CLASS, 0.0)


def paired_lines(all_runs: dict[str, StrategyRuns]) -> list[str]:
    lines = ["final champion mIoU minus random's, per seed (mean, 95% t interval):"]
    for strategy in all_runs:
        if strategy == "random":
            continue
        diffs = paired(all_runs, strategy, final_miou)
        mean, low, high = paired_interval(list(diffs.values()))
        cells = ", ".join(f"{seed}: {d:+.3f}" for seed, d in sorted(diffs.items()))
        lines.append(f"  {strategy:<18} {cells}; mean {mean:+.3f} [{low:+.3f}, {high:+.3f}]")
    return lines


def al_goals(all_runs: dict[str, StrategyRuns], default: str) -> list[tuple[str, str, bool]]:
    """The issue's active-learning goals for the default strategy, paired by seed."""
    shares = label_shares(all_runs, default)
    reached = sorted(v for v in shares.values() if v is not None)
    median = statistics.median([math.inf if v is None else v for v in shares.values()])
    diffs = paired(all_runs, default, final_miou)
    mean, low, high = paired_interval(list(diffs.values()))
    rare = paired(all_runs, default, rare_iou)
    ahead = sum(d > 0 for d in rare.values())
    n = len(diffs)
    return [
        (
            f"reaches random's final champion mIoU with <= {MAX_LABEL_SHARE:.0%} of its labels "
            "(median over seeds)",
            f"median {'not reached' if math.isinf(median) else f'{median:.0%}'}; reached on "
            f"{len(reached)} of {len(shares)} seeds",
            median <= MAX_LABEL_SHARE,
        ),
        (
            "final champion mIoU ahead of random, 95% interval of the paired difference above 0",
            f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] over {n} seeds",
            n >= 2 and low > 0,
        ),
        (
            f"rare class ({RARE_CLASS}) final IoU above random's on most seeds",
            f"ahead on {ahead} of {len(rare)} seeds ("
            + ", ".join(f"{seed}: {d:+.3f}" for seed, d in sorted(rare.items()))
            + ")",
            ahead > len(rare) / 2,
        ),
    ]


def verdict_line(goal: str, figure: str, met: bool) -> str:
    return f"{'met    ' if met else 'NOT met'}  {goal}: {figure}"


def summarize(
    all_runs: dict[str, StrategyRuns], default: str
) -> tuple[list[str], list[tuple[str, str, bool]]]:
    """The printout after the runs, and every judged goal as (goal, figure, met): the loop's
    goals on the default strategy's means over seeds, then active learning against random."""
    lines: list[str] = []
    for runs in all_runs.values():
        lines += ["", *strategy_table(runs)]
    judged = [
        (f"{default}: {v.goal}", v.figure, v.met)
        for v in verdicts(all_runs[default].mean_figures())
    ]
    lines += ["", f"the loop's goals, on the means over seeds of the default strategy ({default}):"]
    lines += [f"  {verdict_line(*j)}" for j in judged]
    passes = goal_pass_counts(all_runs[default].runs)
    lines += ["", f"the loop's goals, run by run ({default}; each goal on every seed):"]
    lines += [
        f"  {passed}/{total} seeds  {goal}" + (f" (missed on seeds {missed})" if missed else "")
        for goal, passed, total, missed in passes
    ]
    comparison = compare(all_runs, default)
    lines += ["", "active learning vs random selection:"]
    lines += [f"  {verdict_line(*j)}" for j in comparison]
    paired: list[tuple[str, str, bool]] = []
    if "random" in all_runs and default != "random":
        lines += ["", *label_efficiency_lines(all_runs)]
        lines += ["", *paired_lines(all_runs)]
        paired = al_goals(all_runs, default)
        lines += ["", f"active learning vs random, paired by seed ({default}):"]
        lines += [f"  {verdict_line(*j)}" for j in paired]
    return lines, judged + comparison + paired


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--strategies",
        nargs="+",
        default=[DEFAULT_STRATEGY, "uncertainty", "random"]
        if DEFAULT_STRATEGY != "uncertainty"
        else ["uncertainty", "uncertain_kcenter", "random"],
    )
    ap.add_argument(
        "--pool",
        choices=["field", "plain"],
        default="field",
        help="the demo's synthetic pool (default field: plot sessions, a rare weed)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="as the demo (default 3)")
    ap.add_argument(
        "--window", type=int, default=None, help="as the demo: pool images pre-annotated per round"
    )
    ap.add_argument("--out", default=f"runs/bench-loop/{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("-o", "--override", action="append", default=[], help="SECTION.KEY=VALUE")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take the runs already finished under --out (their summary.json) instead of "
        "running them again: resume an interrupted benchmark, or print a finished one again",
    )
    args = ap.parse_args()
    if len(args.seeds) < 3:
        print("note: the goals are judged over at least 3 seeds; fewer give a rough look only")
    default = DEFAULT_STRATEGY if DEFAULT_STRATEGY in args.strategies else args.strategies[0]
    if default != DEFAULT_STRATEGY:
        print(
            f"note: the default strategy ({DEFAULT_STRATEGY}) is not among --strategies; "
            f"the goals below judge {default} in its place"
        )
    quiet_console()

    all_runs = run_all(args)
    lines, judged = summarize(all_runs, default)
    print("\n".join(lines), flush=True)
    for goal, figure, met in judged:
        record(f"loop, {len(args.seeds)} seeds: {goal}", figure, "", None, "", met)

    first = all_runs[default].runs[0]
    report = Path(args.out) / "loop_bench_report.html"
    # The table shows the first seed's run of the default strategy; the plots, every strategy.
    write_loop_report(
        report,
        [round_summary(r) for r in first.rounds],
        [],
        LABELS,
        title=f"segloop loop benchmark: {len(args.seeds)} seeds x {', '.join(args.strategies)} "
        f"(table: {default}, seed {first.seed}; samples: each run's own loop_report.html)",
        curves=[runs.curve() for runs in all_runs.values()],
        verdicts=[verdict_line(*j) for j in judged],
    )
    print(f"\nreport (label-efficiency curves per strategy): {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
