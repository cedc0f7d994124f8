"""The tutorials rendered as pages (``python tutorials/build_pages.py``): built, complete, and
clean in a real browser.

The default run builds one tutorial (quick mode) and checks the page: its prose, code, printed
output and every figure it saves, each ``<img>`` pointing at a decodable PNG. A slow test builds
them all. Where Chromium and Selenium are installed (``apt-get install chromium chromium-driver``,
``pip install selenium``), the pages are also opened headless: every image must have loaded
(``naturalWidth > 0``) and the console must hold no errors; elsewhere that test skips, saying why.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _builder():
    spec = importlib.util.spec_from_file_location("build_pages", ROOT / "tutorials" / "build_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_pages(out: Path, results):
    assert results and all(ok for _, _, ok in results), results
    index = (out / "index.html").read_text()
    for target, _, _ in results:
        text = target.read_text()
        assert f'href="{target.name}"' in index
        assert "<h1>" in text and '<pre class="code">' in text and 'class="error"' not in text
        assert "quick mode" in text  # the printed output of the first cell
        imgs = re.findall(r'<img src="([^"]+)"', text)
        assert imgs, f"{target.name} shows no figure"
        for src in imgs:
            data = (out / src).read_bytes()
            assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, src
    return [t for t, _, _ in results]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    return out, _check_pages(out, _builder().build(["05"], out))


def test_one_tutorial_page_has_prose_code_output_and_figures(built):
    out, pages = built
    text = pages[0].read_text()
    assert len(re.findall(r'<img src="figures/05_[a-z_]+\.png"', text)) == 2
    assert "<p>" in text and "<code>" in text


def test_markdown_subset():
    b = _builder()
    html = b.markdown_html("# Title\n\nSome `x < y` and **bold** and *it*.\n\n- one\n- two\n  more\n\n1. a\n2. b")
    assert "<h1>Title</h1>" in html and "<code>x &lt; y</code>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<ul><li>one</li><li>two more</li></ul>" in html and "<ol><li>a</li><li>b</li></ol>" in html
    assert b.cells("# ---\n# header\n# ---\n\n# %% [markdown]\n# hi\n\n# %%\nx = 1\n") == \
        [("markdown", "# hi"), ("code", "x = 1")]


@pytest.mark.slow
def test_all_tutorials_build(tmp_path):
    results = _builder().build(None, tmp_path)
    assert len(results) == len(list((ROOT / "tutorials").glob("[0-9][0-9]_*.py")))
    _check_pages(tmp_path, results)


def _browser():
    try:
        from selenium import webdriver
    except ImportError:
        return None, "selenium is not installed (pip install selenium)"
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if binary is None:
        return None, "no Chromium found (apt-get install chromium chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver")
    try:
        service = webdriver.ChromeService(executable_path=driver_path) if driver_path else webdriver.ChromeService()
        return webdriver.Chrome(options=opts, service=service), None
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a skip reason
        return None, f"Chromium could not be started: {type(exc).__name__}: {exc}"


def test_pages_in_a_headless_browser(built):
    out, pages = built
    driver, why = _browser()
    if driver is None:
        pytest.skip(why)
    try:
        for page in [out / "index.html"] + pages:
            driver.get(page.as_uri())
            broken = driver.execute_script(
                "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                ".map(i => i.getAttribute('src'));")
            assert broken == [], f"{page.name}: images that did not load: {broken}"
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert errors == [], f"{page.name}: console errors: {errors}"
            assert driver.title
    finally:
        driver.quit()
