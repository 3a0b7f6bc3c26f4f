"""Loop-report inputs for tests: rounds and samples written as files."""

from __future__ import annotations

from components.core.images import save_mask_png, save_rgb
from components.loop_report.page import RoundSummary, Sample


def write_sample(folder, rid, image, pre, refined, round_number=None) -> Sample:
    """An image with its pre-annotation and refined mask as files, as a report `Sample`."""
    save_rgb(folder / f"{rid}.png", image)
    save_mask_png(folder / f"{rid}-pre.png", pre)
    save_mask_png(folder / f"{rid}-ref.png", refined)
    return Sample(
        rid,
        str(folder / f"{rid}.png"),
        str(folder / f"{rid}-pre.png"),
        str(folder / f"{rid}-ref.png"),
        round=round_number,
    )


ROUNDS = [
    RoundSummary(1, 6, 0.71, 0.12, 0.55, "1", None, {"soil": 0.9, "maize": 0.2}),
    RoundSummary(2, 6, 0.83, 0.07, 0.68, "2", "champion", {"soil": 0.93, "maize": 0.43}),
]
