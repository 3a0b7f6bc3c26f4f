"""Does the loop pay off? The demo's loop over several seeds and selection strategies.

    python -m benchmarks loop                  # 3 seeds x (uncertainty, diverse, mixed, random)
    python benchmarks/bench_loop.py --seeds 0 1 2 3 --strategies uncertainty random
    python benchmarks/bench_loop.py --rounds 3 --out runs/bench-loop
    python benchmarks/bench_loop.py --out runs/bench-loop/<time> --reuse   # print it again

Each (seed, strategy) is one whole `segloop demo` (pipelines.demo.run_demo) on the embedded
stack: the same synthetic dataset, seed set, probe set, test set, windows, budget and training
per seed; only `select.strategy` differs. The figures are the demo's own (pipelines.loop_goals):
the champion's test mIoU per round, the probe effort (pixels a person would change on a fixed
probe set, pre-annotated by the champion of the round) and probe IoU per round, the final
champion's per-class test IoU. It prints, per strategy, the mean and the spread (standard
deviation, and min..max) over seeds; the goals judged on the means of the default strategy
(`select.strategy` in the config, else the settings' default); and active learning against
random selection: label-efficiency curves (champion test mIoU against labelled images, probe
effort per round) and who wins. The curves and verdicts also go into an HTML loop report.
Each demo's console output goes to <out>/<strategy>-seed<N>/console.txt.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rows import record  # noqa: E402
from components.core.synthetic import LABELS  # noqa: E402
from components.report.loop_report import Curve, write_loop_report  # noqa: E402
from components.select.settings import SelectSettings  # noqa: E402
from pipelines.demo import DemoResult, quiet_console, round_summary, run_demo  # noqa: E402
from pipelines.loop_goals import LoopFigures, verdicts  # noqa: E402

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
    comparison = compare(all_runs, default)
    lines += ["", "active learning vs random selection:"]
    lines += [f"  {verdict_line(*j)}" for j in comparison]
    return lines, judged + comparison


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--strategies", nargs="+", default=["uncertainty", "diverse", "mixed", "random"]
    )
    ap.add_argument("--rounds", type=int, default=3, help="as the demo (default 3)")
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
