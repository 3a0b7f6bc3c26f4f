"""The loop report renders a self-contained page with the rounds, plots and side-by-side masks."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pytest
from PIL import Image
from report_helpers import ROUNDS, write_sample  # tests/ is on sys.path

from components.core.labels import LabelSet, overlay_color
from components.loop_report.page import (
    Curve,
    RoundSummary,
    render_loop_report,
    write_loop_report,
)

LABELS = LabelSet.model_validate(
    {
        "labels": [
            {"name": "soil", "id": 0, "color": "#000000"},
            {"name": "maize", "id": 1, "color": "#00ff00"},
        ]
    }
)


def _picture(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def test_loop_report_has_rounds_plots_and_overlays(tmp_path):
    image = np.full((48, 64, 3), 120, np.uint8)
    pre, refined = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    pre[:10] = 1
    refined[:20] = 1
    sample = write_sample(tmp_path, "a", image, pre, refined, round_number=2)
    out = write_loop_report(tmp_path / "report.html", ROUNDS, [sample], LABELS)
    page = open(out).read()
    assert "champion" in page and "0.680" in page and "changed 20.8%" in page
    # Every share of pixels is a percentage with one decimal; each sample names its round.
    assert "<td>12.0%</td>" in page and "<td>7.0%</td>" in page and "0.120" not in page
    assert "<td>round 2</td>" in page
    pictures = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pictures) == 5  # round plots, class plot, two overlays, pixels changed
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)

    # Overlays are drawn in the report colour of the legend, not the label's own green, and
    # the pre-annotation and the refined mask differ visibly where people changed pixels.
    (name, color), *_ = LABELS.legend()
    assert name == "maize" and color == overlay_color(1) and color in page
    rgb = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)])
    pre_pic, ref_pic, changes = (_picture(p) for p in pictures[2:])
    assert pre_pic.shape == (48, 64, 3)
    assert np.abs(pre_pic[15].astype(int) - rgb).sum(axis=1).max() > 150  # row 15: not in pre
    assert np.abs(ref_pic[15, 5:-5].astype(int) - rgb).sum(axis=1).max() < 150  # in refined
    assert (changes[10:20] == (255, 0, 255)).all() and not (changes[25:] == (255, 0, 255)).any()


def test_loop_report_without_round_or_samples(tmp_path):
    image = np.full((16, 16, 3), 90, np.uint8)
    sample = write_sample(
        tmp_path, "b", image, np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8)
    )
    page = open(write_loop_report(tmp_path / "r.html", ROUNDS[:1], [sample], LABELS)).read()
    assert "<td>round -</td>" in page and "changed 100.0%" in page
    from components.loop_report.page import render_loop_report

    empty = render_loop_report(ROUNDS, [], LABELS, "t", samples_note="No samples: because.")
    assert "No samples: because." in empty and "class='sample'" not in empty


def test_loop_report_stage_refuses_a_folder_that_is_no_download(tmp_path):
    from components.core.errors import SegloopError
    from components.loop_report.stage import run_loop_report
    from pipelines.config import load_config

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(SegloopError, match="has no provenance.json: is it a download-cvat output"):
        run_loop_report(load_config(None, []), download=str(tmp_path), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_loop_report_shows_label_efficiency_curves_and_verdicts(tmp_path):
    rounds = [
        RoundSummary(0, 8, None, None, 0.5, "1", None, {}, 8, 0.5),
        RoundSummary(1, 12, 0.7, 0.04, 0.66, "2", None, {}, 20, 0.66, 0.71, 0.031),
        RoundSummary(2, 12, 0.8, 0.03, 0.72, "3", "champion", {}, 32, 0.72, 0.78, 0.017),
    ]
    curves = [
        Curve("uncertainty", [8, 20, 32], [0.5, 0.66, 0.72], [1, 2], [0.031, 0.017]),
        Curve("random", [8, 20, 32], [0.5, 0.6, 0.65], [1, 2], [0.031, 0.025], [0, 0.02, 0.03]),
    ]
    lines = ["met      champion test mIoU rises every round: 0.500 -> 0.660 -> 0.720"]
    page = render_loop_report(rounds, [], LABELS, "t", curves=curves, verdicts=lines)
    assert "Does the loop pay off?" in page and lines[0] in html.unescape(page)
    # Labelled images, probe IoU and probe effort are columns of the rounds table.
    assert "<td>32</td>" in page and "<td>0.780</td>" in page and "<td>1.7%</td>" in page
    pictures = re.findall(r"alt=\"([^\"]+)\" src=\"data:image/png", page)
    assert any(p.startswith("label efficiency") for p in pictures)
    # Without curves given, the run's own (champion and each round's model) are drawn.
    own = render_loop_report(rounds, [], LABELS, "t")
    assert "label efficiency" in own and "Does the loop pay off?" not in own
    # Rounds from elsewhere (no labelled counts): no curve at all.
    assert "label efficiency" not in render_loop_report(ROUNDS, [], LABELS, "t")
