"""The three HTML reports in a real headless browser: every picture loads, every section has
content. Debian's Chromium and chromedriver drive it (an explicit driver path, so Selenium
Manager never downloads anything); without them the tests skip.

Set SEGLOOP_REPORT_SHOTS=<folder> to keep a full-page screenshot of each report there.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from model_helpers import evaluation_variant  # tests/ is on sys.path
from report_helpers import ROUNDS, write_sample  # tests/ is on sys.path

from components.loop_report.page import write_loop_report
from components.register.compare import run_compare
from components.register.stage import run_register
from pipelines.demo.synthetic import LABELS, render

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)):
        if not os.access(path, os.X_OK):
            pytest.skip(
                f"{name} not installed at {path} (Debian: apt-get install chromium chromium-driver)"
            )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


LOADED = "return document.readyState === 'complete' && [...document.images].every(i => i.complete)"
BROKEN = (
    "return [...document.images].filter(i => !(i.naturalWidth > 0))"
    ".map(i => i.alt || i.getAttribute('src').slice(0, 60))"
)
# Per <section>: its heading and whether anything besides the heading is there to see.
SECTIONS = """return [...document.querySelectorAll('section')].map(s => {
  const h = s.querySelector('h2');
  const rest = [...s.children].filter(c => c !== h);
  const text = rest.map(c => c.innerText.trim()).join('');
  return {heading: h ? h.innerText : '', images: s.querySelectorAll('img').length,
          tables: s.querySelectorAll('table').length, text: text.length};
});"""


def check_page(driver, page: Path, shot: str, pictures: bool = True) -> list[dict]:
    """Open `page`, wait for its pictures; no picture may be broken, no section empty."""
    driver.set_window_size(1280, 900)
    driver.get(page.resolve().as_uri())
    deadline = time.monotonic() + 20
    while not driver.execute_script(LOADED):
        assert time.monotonic() < deadline, f"{page}: pictures still loading after 20 s"
        time.sleep(0.1)
    assert (driver.execute_script("return document.images.length") > 0) == pictures
    assert driver.execute_script(BROKEN) == [], f"{page}: broken pictures"
    sections = driver.execute_script(SECTIONS)
    assert sections, f"{page} has no sections"
    for s in sections:
        assert s["heading"], f"{page}: a section without a heading: {s}"
        assert s["images"] or s["tables"] or s["text"], f"{page}: empty section {s['heading']!r}"
    folder = os.environ.get("SEGLOOP_REPORT_SHOTS")
    if folder:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(height + 100, 900), 8000))
        Path(folder).mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(Path(folder) / f"{shot}.png"))
    return sections


def test_loop_report_in_a_browser(tmp_path, browser):
    # Synthetic field images (soil and plants, 64 px); people corrected the model's
    # pre-annotation: it missed the smaller plants and called one species another.
    samples = []
    for index in range(3):
        image, truth, _ = render(seed=5, index=index, width=64, height=64)
        pre = truth.copy()
        pre[:, 40:] = 0
        pre[(pre == 1)] = 2
        samples.append(write_sample(tmp_path, f"img{index}", image, pre, truth, round_number=2))
    page = write_loop_report(tmp_path / "loop_report.html", ROUNDS, samples, LABELS)
    sections = check_page(browser, Path(page), "loop_report")
    assert [s["heading"] for s in sections] == ["Rounds", "Pre-annotation and refined mask"]
    assert sections[1]["images"] == 3 * 3  # pre-annotation, refined, changes per sample
    legend = browser.execute_script(
        "return [...document.querySelectorAll('.legend span.swatch')]"
        ".map(s => getComputedStyle(s).backgroundColor)"
    )
    assert len(legend) == len(LABELS.legend()) + 1  # the classes and "changed by people"


def test_evaluation_and_compare_reports_in_a_browser(evaluated, browser):
    cfg, _, _, tmp = evaluated
    sections = check_page(browser, tmp / "e1" / "report.html", "evaluation_report")
    headings = [s["heading"] for s in sections]
    assert {"Colours", "Best images", "Worst images", "Confusion matrix"} <= set(headings)
    assert all(s["images"] for s in sections if s["heading"].endswith("images"))

    run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    e2 = evaluation_variant(tmp / "e1", tmp / "e2", mean_iou=0.9)
    run_register(cfg, evaluation=str(e2), out=str(tmp / "r2"))
    run_compare(cfg, out=str(tmp / "cmp"), versions=[1, 2])
    sections = check_page(browser, tmp / "cmp" / "compare.html", "compare", pictures=False)
    assert [s["heading"] for s in sections] == ["Versions", "Columns"]
    headers = browser.execute_script(
        "return [...document.querySelectorAll('th')].map(h => h.innerText)"
    )
    assert "delta_mean_iou (vs v1)" in headers
    caption = browser.execute_script("return document.querySelector('caption').innerText")
    assert "against version 1" in caption
