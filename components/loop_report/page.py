"""The loop report: one self-contained HTML page (pictures embedded) about the rounds so far.

It shows pre-annotations next to the refined masks for a sample of images (with the round they
come from and the pixels people changed), mean IoU and correction effort per round as plots,
and per-class IoU per model version. Masks are drawn in the report colours of
`components.core.labels`, with a legend. Being one file, it can be written to the run folder,
logged to MLflow and emitted as a KFP `HTML` artifact. The page is `templates/loop_report.html`.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
from PIL import Image  # noqa: E402

from components.core import storage  # noqa: E402
from components.core.images import load_mask, load_rgb  # noqa: E402
from components.core.labels import LabelSet, mark_pixels, paint_overlay, shrink  # noqa: E402

TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("components.loop_report", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
SAMPLE_SIDE = 320  # sample pictures are drawn at most this large


@dataclass
class RoundSummary:
    round: int
    images_refined: int | None
    correction_iou: float | None  # mean IoU between pre-annotation and refined mask (1 = no change)
    changed_share: float | None  # share of pixels people changed
    test_miou: float | None
    model_version: str | None
    alias: str | None
    per_class_iou: dict[str, float] = field(default_factory=dict)
    labelled_images: int | None = None  # labelled so far
    champion_miou: float | None = None  # the champion's test mean IoU after the round
    # The champion that pre-annotated this round's batch, on a fixed probe set (the demo's).
    probe_iou: float | None = None
    probe_changed_share: float | None = None


@dataclass
class Curve:
    """One label-efficiency curve (e.g. a selection strategy, mean over seeds) for the plots."""

    name: str
    labelled: list[int]  # labelled images after each round
    champion_miou: list[float]  # the champion's test mean IoU after each round
    probe_rounds: list[int]  # rounds with a probe figure
    probe_changed: list[float]  # share of probe pixels a person would change
    miou_spread: list[float] | None = None  # +- (e.g. the standard deviation over seeds)
    probe_spread: list[float] | None = None


@dataclass
class Sample:
    record_id: str
    image_uri: str
    pre_mask_uri: str
    refined_mask_uri: str
    round: int | None = None  # the round whose people refined it


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _array_png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _round_plots(rounds: list[RoundSummary]) -> str:
    xs = [r.round for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(xs, [r.test_miou or 0 for r in rounds], marker="o")
    axes[0].set(title="test mean IoU per round", xlabel="round", ylabel="mean IoU", ylim=(0, 1))
    shares = [100 * (r.changed_share or 0) for r in rounds]
    bars = axes[1].bar(xs, shares, color="#d95f02")
    axes[1].bar_label(
        bars, labels=["-" if r.changed_share is None else f"{s:.1f}%" for r, s in zip(rounds, shares, strict=True)],
        fontsize=8,
    )  # fmt: skip
    axes[1].set(title="correction effort: pixels changed", xlabel="round", ylabel="pixels changed")
    axes[1].set_ylim(0, max([*shares, 1.0]) * 1.2)
    axes[1].yaxis.set_major_formatter(PercentFormatter(decimals=1))
    for ax in axes:
        ax.set_xticks(xs)
    fig.tight_layout()
    return _png(fig)


def curves_of(rounds: list[RoundSummary]) -> list[Curve]:
    """This run's own curves: the champion's and each round's model's test mIoU."""
    with_counts = [r for r in rounds if r.labelled_images is not None]
    if not with_counts:
        return []
    probed = [r for r in with_counts if r.probe_changed_share is not None]
    champion = Curve(
        "champion",
        [r.labelled_images for r in with_counts],
        [r.champion_miou if r.champion_miou is not None else r.test_miou or 0 for r in with_counts],
        [r.round for r in probed],
        [r.probe_changed_share for r in probed],
    )
    model = Curve(
        "round's model",
        champion.labelled,
        [r.test_miou or 0 for r in with_counts],
        [],
        [],
    )
    return [champion, model]


def _efficiency_plot(curves: list[Curve]) -> str | None:
    """Label efficiency: test mIoU against labelled images, and probe effort per round."""
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    # Markers and dashes differ per curve, so curves that coincide stay visible.
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]
    for i, c in enumerate(curves):
        marker, dashes = styles[i % len(styles)]
        line = axes[0].errorbar(
            c.labelled, c.champion_miou, yerr=c.miou_spread, marker=marker, linestyle=dashes,
            capsize=3, label=c.name,
        )  # fmt: skip
        if c.probe_changed:
            axes[1].errorbar(
                c.probe_rounds,
                [100 * v for v in c.probe_changed],
                yerr=[100 * v for v in c.probe_spread] if c.probe_spread else None,
                marker=marker,
                linestyle=dashes,
                capsize=3,
                color=line[0].get_color(),
                label=c.name,
            )
    axes[0].set(title="test mean IoU vs labelled images", xlabel="labelled images")
    axes[0].set(ylabel="mean IoU", ylim=(0, 1))
    axes[1].set(title="probe effort: pixels a person changes", xlabel="round")
    axes[1].set(ylabel="pixels changed")
    axes[1].set_ylim(bottom=0)
    axes[1].set_xticks(sorted({r for c in curves for r in c.probe_rounds}))
    axes[1].yaxis.set_major_formatter(PercentFormatter(decimals=1))
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _class_plot(rounds: list[RoundSummary]) -> str | None:
    with_classes = [r for r in rounds if r.per_class_iou]
    if not with_classes:
        return None
    names = sorted({n for r in with_classes for n in r.per_class_iou})
    width = 0.8 / len(with_classes)
    fig, ax = plt.subplots(figsize=(max(5, len(names) * 1.4), 3.2))
    for i, r in enumerate(with_classes):
        xs = np.arange(len(names)) + i * width
        ax.bar(
            xs,
            [r.per_class_iou.get(n, 0) for n in names],
            width,
            label=f"v{r.model_version or '?'} (round {r.round})",
        )
    ax.set_xticks(np.arange(len(names)) + width * (len(with_classes) - 1) / 2, names)
    ax.set(ylim=(0, 1), ylabel="IoU", title="per-class IoU per model version")
    ax.legend(fontsize=8)
    return _png(fig)


def _sample_row(s: Sample, palette) -> dict | None:
    image = load_rgb(s.image_uri)
    pre, refined = load_mask(s.pre_mask_uri), load_mask(s.refined_mask_uri)
    if pre.shape != image.shape[:2] or refined.shape != image.shape[:2]:
        return None
    changed = float((pre != refined).mean())  # at full resolution
    image, (pre, refined) = shrink(image, [pre, refined], SAMPLE_SIDE)
    return {
        "round": "-" if s.round is None else s.round,
        "record_id": s.record_id,
        "changed": percent(changed),
        "pre": _array_png(paint_overlay(image, pre, palette)),
        "refined": _array_png(paint_overlay(image, refined, palette)),
        "changes": _array_png(mark_pixels(image, pre != refined)),
    }


def render_loop_report(
    rounds: list[RoundSummary],
    samples: list[Sample],
    labels: LabelSet,
    title: str,
    samples_note: str | None = None,
    curves: list[Curve] | None = None,
    verdicts: list[str] | None = None,
) -> str:
    """The page; `samples_note` says why there are no samples when there are none; `curves`
    (default: this run's own) are the label-efficiency curves, `verdicts` the lines judging the
    loop's goals (pipelines.demo.loop_goals)."""
    palette = labels.overlay_palette()
    rows = [
        [
            r.round,
            "-" if r.images_refined is None else r.images_refined,
            "-" if r.labelled_images is None else r.labelled_images,
            _fmt(r.correction_iou),
            percent(r.changed_share),
            _fmt(r.probe_iou),
            percent(r.probe_changed_share),
            _fmt(r.test_miou),
            _fmt(r.champion_miou),
            r.model_version or "-",
            r.alias or "-",
        ]
        for r in rounds
    ]
    sample_rows = [row for s in samples if (row := _sample_row(s, palette))]
    return TEMPLATES.get_template("loop_report.html").render(
        title=title,
        rows=rows,
        round_plots=_round_plots(rounds),
        efficiency_plot=_efficiency_plot(curves if curves is not None else curves_of(rounds)),
        verdicts=verdicts or [],
        class_plot=_class_plot(rounds),
        legend=labels.legend(),
        samples=sample_rows,
        samples_note=samples_note,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def percent(share: float | None) -> str:
    """A share as the reports write it: a percentage with one decimal (0.0441 -> 4.4%)."""
    return "-" if share is None else f"{share:.1%}"


def write_loop_report(
    uri: str | Path,
    rounds,
    samples,
    labels,
    title="segloop active-learning loop",
    curves: list[Curve] | None = None,
    verdicts: list[str] | None = None,
) -> str:
    page = render_loop_report(rounds, samples, labels, title, curves=curves, verdicts=verdicts)
    storage.write_text(str(uri), page)
    return str(uri)
