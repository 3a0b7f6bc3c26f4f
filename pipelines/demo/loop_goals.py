"""Does the loop pay off? The yield goals of the active-learning loop, judged on its figures.

One run of the demo, or the mean over seeds in `benchmarks/bench_loop.py`, gives per round:

- the champion's test mean IoU (after the round's register: the new model if it was promoted,
  else the previous champion), rounds 0..R;
- the probe effort: the share of pixels a person would change, and the mean IoU, when the
  champion that pre-annotates round r's batch pre-annotates the fixed probe set (typical new
  images from the pool, never selected or trained on), rounds 1..R. Unlike the per-batch effort
  it does not depend on which images the selector picked;
- the final champion's test IoU per class.

The demo's summary and the benchmark print the same verdict lines, made here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_FINAL_GAIN = 0.15  # final champion's test mIoU over round 0's
MAX_EFFORT_RATIO = 0.60  # last round's probe effort / round 1's
MIN_CLASS_IOU = 0.50  # every class's test IoU by the last round


@dataclass
class LoopFigures:
    """The figures the goals read (single values for one run, means for several)."""

    champion_miou: list[float]  # rounds 0..R
    probe_changed: list[float]  # rounds 1..R (share of pixels, 0..1)
    probe_iou: list[float]  # rounds 1..R
    class_iou: dict[str, float] = field(default_factory=dict)  # final champion, on the test set


@dataclass(frozen=True)
class Verdict:
    goal: str
    figure: str
    met: bool

    def line(self) -> str:
        return f"{'met    ' if self.met else 'NOT met'}  {self.goal}: {self.figure}"


def _rising(values: list[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:], strict=False))


def _series(values: list[float], pattern: str) -> str:
    return " -> ".join(pattern.format(v) for v in values)


def verdicts(f: LoopFigures) -> list[Verdict]:
    """One verdict per goal of the loop (champion, people's effort, every class)."""
    out = []
    gain = f.champion_miou[-1] - f.champion_miou[0]
    out.append(
        Verdict(
            f"champion test mIoU rises every round, final >= round 0 + {MIN_FINAL_GAIN:.2f}",
            f"{_series(f.champion_miou, '{:.3f}')} (final {gain:+.3f})",
            _rising(f.champion_miou) and gain >= MIN_FINAL_GAIN,
        )
    )
    if len(f.probe_changed) >= 2:
        ratio = f.probe_changed[-1] / f.probe_changed[0] if f.probe_changed[0] else float("inf")
        out.append(
            Verdict(
                f"probe effort in the last round <= {MAX_EFFORT_RATIO:.0%} of round 1's",
                f"{_series(f.probe_changed, '{:.2%}')} of pixels changed ({ratio:.0%} of round 1)",
                ratio <= MAX_EFFORT_RATIO,
            )
        )
        out.append(
            Verdict(
                "probe pre-annotation IoU rises round over round",
                _series(f.probe_iou, "{:.3f}"),
                _rising(f.probe_iou),
            )
        )
    else:
        out.append(Verdict("probe effort falls", "needs at least 2 rounds (--rounds 2)", False))
    if f.class_iou:
        worst = min(f.class_iou, key=lambda k: f.class_iou[k])
        out.append(
            Verdict(
                f"every class reaches test IoU >= {MIN_CLASS_IOU:.2f} by the last round",
                ", ".join(f"{k} {v:.3f}" for k, v in f.class_iou.items()) + f" (lowest: {worst})",
                f.class_iou[worst] >= MIN_CLASS_IOU,
            )
        )
    return out
