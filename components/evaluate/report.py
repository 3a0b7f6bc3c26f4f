"""The evaluation report: pictures (matplotlib, PNG) and the same content as Markdown and HTML."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from components.core.images import colorize, load_mask, load_rgb, overlay  # noqa: E402
from components.core.labels import LabelSet  # noqa: E402


def iou_bars(result: dict[str, Any], path: Path) -> None:
    names = list(result["iou"])
    values = [v if v is not None else 0.0 for v in result["iou"].values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(names) + 2), 3.2))
    bars = ax.bar(names, values, color="#4c78a8")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(result["mean_iou"], color="#e45756", linestyle="--", label="mean IoU")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("IoU")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Per-class IoU (test, full resolution)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_plot(cm: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalized (recall per true class), with raw pixel counts in the cells."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 0.7 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center",
                    fontsize=7, color=color)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalized)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(rows: list[dict[str, Any]], labels: LabelSet, path: Path, title: str) -> None:
    """One row per image: image, truth overlay, prediction overlay, errors."""
    palette = labels.palette()
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        image = load_rgb(row["image"])
        truth = load_mask(row["mask"])
        pred = load_mask(row["prediction"])
        wrong = (truth != pred) & (truth != 255)
        errors = image.copy() // 3
        errors[wrong] = (255, 0, 255)
        panels = [
            (image, f"{row['record_id']}"),
            (overlay(image, np.where(truth == 255, 0, truth), palette), "truth"),
            (overlay(image, pred, palette), f"prediction (mIoU {row['mean_iou']:.3f})"),
            (errors, "errors (magenta)"),
        ]
        for c, (img, name) in enumerate(panels):
            axes[r, c].imshow(img)
            axes[r, c].set_title(name, fontsize=9)
            axes[r, c].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def legend_png(labels: LabelSet, path: Path) -> None:
    swatches = colorize(np.arange(labels.num_classes, dtype=np.uint8)[None, :], labels.palette())
    fig, ax = plt.subplots(figsize=(max(3, labels.num_classes * 1.2), 1))
    ax.imshow(swatches, aspect="auto")
    ax.set_xticks(range(labels.num_classes), labels.names)
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(result: dict[str, Any], names: list[str]) -> list[list[str]]:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    return [
        [n, fmt(result["iou"][n]), fmt(result["dice"][n]), fmt(result["precision"][n]),
         fmt(result["recall"][n])]
        for n in names
    ]  # fmt: skip


def write_reports(folder: Path, summary: dict[str, Any], names: list[str]) -> None:
    """report.md and report.html next to figures/ (relative links)."""
    result = summary["scores"]
    header = ["class", "IoU", "Dice", "precision", "recall"]
    rows = _table(result, names)
    figures = [
        ("Per-class IoU", "figures/iou_bars.png"),
        ("Confusion matrix", "figures/confusion.png"),
        ("Best images", "figures/best.png"),
        ("Worst images", "figures/worst.png"),
        ("Colours", "figures/legend.png"),
    ]
    facts = [
        ("model", summary["model"]),
        ("test images", str(summary["images"])),
        ("split hash", summary["split_hash"]),
        ("mean IoU", f"{result['mean_iou']:.4f}"),
        ("mean Dice", f"{result['mean_dice']:.4f}"),
        ("pixel accuracy", f"{result['pixel_accuracy']:.4f}"),
    ]
    md = ["# Evaluation report", ""]
    md += [f"- **{k}**: `{v}`" for k, v in facts]
    md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    for title, src in figures:
        md += ["", f"## {title}", "", f"![{title}]({src})"]
    (folder / "report.md").write_text("\n".join(md) + "\n")

    e = html.escape
    body = ["<h1>Evaluation report</h1>", "<ul>"]
    body += [f"<li><b>{e(k)}</b>: <code>{e(str(v))}</code></li>" for k, v in facts]
    body += ["</ul>", "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    body += ["</table>"]
    for title, src in figures:
        body += [f"<h2>{e(title)}</h2>", f'<img src="{e(src)}" alt="{e(title)}">']
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}"
    )
    (folder / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
