"""``neo shards serve`` in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
by Selenium): overview -> shards -> a pack, images loaded, one T/H/W cell per token, screenshot.

Skips when Chromium is not installed, except under CI (``CI`` set), where it must be.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from neo_data.format.shards import PackedDataset
from tests.helpers import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = [
    name
    for name, found in (
        ("chromium", CHROMIUM),
        ("chromedriver (Debian chromium-driver)", CHROMEDRIVER),
        ("selenium (pip)", importlib.util.find_spec("selenium")),
    )
    if found is None
]
WHY = f"the headless browser test needs {', '.join(MISSING)}"

# Without a browser: skip here (before any fixture starts Ray), but fail under CI, which must
# install them: apt-get install -y chromium chromium-driver; pip install selenium.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING) and not os.environ.get("CI"), reason=WHY),
]


@pytest.fixture(scope="module")
def demo(demo_packed) -> str:
    """The demo set, curated and packed (``<root>/curated``, ``<root>/packed``)."""
    return demo_packed


@pytest.fixture(scope="module")
def browser():
    if MISSING:  # only reached under CI (see pytestmark)
        pytest.fail(f"{WHY}; CI must install them (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1400,1800")
    # An explicit driver path: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(demo):
    """``neo shards serve`` as a user runs it, on a free loopback port; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "shards", "serve", f"{demo}/packed", "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (
            line,
            proc.poll(),
            proc.stderr.read() if proc.poll() is not None else "",
        )
        yield line.split(" at ")[1].split()[0].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_browse_to_a_pack_in_chromium(browser, served, demo, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ds = PackedDataset(f"{demo}/packed")
    browser.get(served + "/")
    assert browser.current_url == served + "/ds/0/"
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("demo")
    bucket_rows = browser.find_elements(By.CSS_SELECTOR, "#buckets tbody tr")
    assert [r.find_element(By.TAG_NAME, "td").text for r in bucket_rows] == ds.buckets

    browser.find_element(By.LINK_TEXT, "shards").click()
    shard = next(i for i, s in enumerate(ds.shards) if s["images"])
    browser.find_element(By.LINK_TEXT, ds.shards[shard]["path"]).click()
    pack = ds.read_pack(shard, 0)
    browser.find_element(By.LINK_TEXT, pack["pack_id"]).click()
    assert browser.current_url == f"{served}/ds/0/shard/{shard}/pack/0"

    # every image of the grid loaded, at the size the shard stores
    def loaded(driver):
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('#images img'))"
            ".map(i => i.complete ? i.naturalWidth : -1)"
        )

    WebDriverWait(browser, 30).until(lambda d: all(w != -1 for w in loaded(d)))
    assert loaded(browser) == pack["image_widths"]

    # the T/H/W picture: one drawn cell per token, image cells as many as image tokens
    cells = browser.execute_script(
        "const r = document.querySelectorAll('#thw rect.tok');"
        "return [r.length, document.querySelectorAll('#thw rect.tok.img').length,"
        " document.getElementById('thw').getBoundingClientRect().height];"
    )
    assert cells[0] == pack["num_tokens"]
    assert cells[1] == pack["num_image_tokens"]
    assert cells[2] > 100

    shot = tmp_path / "pack.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.size[0] >= 1000
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 200, "the screenshot is (nearly) blank"
