"""The loop report renders a self-contained page with the rounds, plots and side-by-side masks."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from components.core.images import save_mask_png, save_rgb
from components.core.labels import LabelSet
from components.report.loop_report import RoundSummary, Sample, write_loop_report


def test_loop_report_has_rounds_plots_and_overlays(tmp_path):
    labels = LabelSet.model_validate(
        {
            "labels": [
                {"name": "soil", "id": 0, "color": "#000000"},
                {"name": "maize", "id": 1, "color": "#00ff00"},
            ]
        }
    )
    image = np.full((48, 64, 3), 120, np.uint8)
    pre, refined = np.zeros((48, 64), np.uint8), np.zeros((48, 64), np.uint8)
    pre[:10] = 1
    refined[:20] = 1
    save_rgb(tmp_path / "a.png", image)
    save_mask_png(tmp_path / "pre.png", pre)
    save_mask_png(tmp_path / "ref.png", refined)
    rounds = [
        RoundSummary(1, 6, 0.71, 0.12, 0.55, "1", None, {"soil": 0.9, "maize": 0.2}),
        RoundSummary(2, 6, 0.83, 0.07, 0.68, "2", "champion", {"soil": 0.93, "maize": 0.43}),
    ]
    out = write_loop_report(
        tmp_path / "report.html",
        rounds,
        [
            Sample(
                "a", str(tmp_path / "a.png"), str(tmp_path / "pre.png"), str(tmp_path / "ref.png")
            )
        ],
        labels,
    )
    page = open(out).read()
    assert "champion" in page and "0.680" in page and "changed 20.8%" in page
    pictures = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pictures) == 4  # round plots, class plot, two overlays
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)


def test_loop_report_stage_refuses_a_folder_that_is_no_download(tmp_path):
    from components.core.errors import SegloopError
    from components.report.stage import run_loop_report
    from pipelines.config import load_config

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(SegloopError, match="has no provenance.json: is it a download-cvat output"):
        run_loop_report(load_config(None, []), download=str(tmp_path), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
