"""The documentation site (``docs/``, Sphinx): built with the README's command, complete, and clean
in a real browser.

The site is built once per session, as the README says (``python -m sphinx -W --keep-going``:
warnings are errors and a failing tutorial fails the build), into a temporary folder; that runs
every tutorial in quick mode (about 2 minutes on 2 cores). The HTML is then checked for what the
site promises (every tutorial with its figures, downloads and timing; every name of
``minilr.__all__`` in the API reference; each equation of "The paper in code" with its function's
source and its test; the command line's help), and every page is opened in headless Chromium
(``apt-get install chromium chromium-driver``; Selenium from the ``docs`` extra), served over
HTTP from 127.0.0.1. A page fails on a console error, an image that did not load
(``naturalWidth == 0``), math that MathJax did not typeset (raw TeX such as ``\\frac`` or ``$$``
left as text, or a TeX error) and a link to a page or anchor of the site that does not exist.
Screenshots of the home page and of "The paper in code" are written to ``docs/_build/screenshots``
(or ``$MINILR_SCREENSHOTS``). Without a browser the browser test skips, saying why.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

import minilr

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted(p.stem for p in (ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
BUILD_TIMEOUT_S = 900  # quick mode takes about 2 minutes; a hung tutorial must not hang CI


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The built site's html folder: the README's command, output in a temporary folder, or the
    folder ``$MINILR_DOCS_HTML`` names (a site built already, e.g. while editing the docs)."""
    if os.environ.get("MINILR_DOCS_HTML"):
        return Path(os.environ["MINILR_DOCS_HTML"])
    out = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, MINILR_QUICK="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(out / "doctrees"),
           str(DOCS), str(out / "html")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"the docs build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return out / "html"


class _Page(HTMLParser):
    """The ids, links and image sources of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.images = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _pages(html: Path):
    """Every page of the site (the theme's HTML templates under _static are not pages)."""
    return sorted(p for p in html.rglob("*.html") if p.relative_to(html).parts[0] != "_static")


# -- the content, from the HTML ----------------------------------------------------------------------
def test_every_tutorial_is_a_gallery_page_with_figures_downloads_and_timing(site):
    index = (site / "tutorials" / "index.html").read_text()
    for stem in TUTORIALS:
        assert f'href="{stem}.html' in index, f"{stem} is missing from the gallery"
        text = (site / "tutorials" / f"{stem}.html").read_text()
        assert "quick mode" in text, f"{stem}: no captured output"
        assert "Total running time of the script" in text, f"{stem}: no timing"
        downloads = re.findall(r'href="(\.\./_downloads/[^"]+\.(?:ipynb|py))"', text)
        assert {Path(d).suffix for d in downloads} == {".ipynb", ".py"}, f"{stem}: downloads {downloads}"
        for d in downloads:
            assert (site / "tutorials" / unquote(d)).resolve().stat().st_size > 1000, d
        figures = [s for s in _parse(site / "tutorials" / f"{stem}.html").images if "sphx_glr_" in s]
        assert figures, f"{stem}: no figure embedded"
        for src in figures:
            data = (site / "tutorials" / unquote(src)).resolve().read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, src


def test_api_reference_documents_every_public_name(site):
    ids = _parse(site / "api.html").ids
    # a name is documented as minilr.NAME, as a module, or where it is defined (minilr.save: minilr.io.save)
    missing = [name for name in minilr.__all__ if not {f"minilr.{name}", f"module-minilr.{name}",
               f"{getattr(getattr(minilr, name), '__module__', '')}.{name}"} & ids]
    assert missing == [], f"not in the API reference: {missing}"
    for layer in ("Linear", "Conv2d", "LSTM", "GraphAttention", "LIF", "Residual"):
        assert f"minilr.{layer}" in ids


PAPER = {  # equation -> the function that computes it (its source is linked) and the test that checks it
    "Eq. 1": ("lr_sums", "test_lr_and_es_are_unbiased_for_the_exact_gradient"),
    "sigma score": ("lr_sigma_sums", "test_sigma_gradient_two_layers"),
    "Eq. 2": ("centred_losses", "test_baseline_keeps_unbiasedness_and_cuts_variance"),
    "Eq. 3": ("alr_sums", "test_sign_estimators_match_their_closed_form"),
    "Eq. 4": ("Projection", "test_training_keeps_sigma_and_weights_in_bounds"),
    "ES": ("es_sums", "test_lr_and_es_are_unbiased_for_the_exact_gradient"),
    "AES": ("aes_sums", "test_sign_estimators_match_their_closed_form"),
    "sigma score of ES": ("es_sigma_sums", "test_lr_and_es_are_unbiased_for_the_exact_gradient"),
    "Eq. 7": ("acc_sta", "test_acc_sta_is_eq_7_and_8"),
}


def test_the_paper_in_code_links_each_equation_to_its_source_and_test(site):
    text = (site / "paper.html").read_text()
    sections = re.split(r"<h2>", text)[1:]
    titles = [re.sub(r"<[^>]+>", "", s.split("</h2>")[0]).rstrip("#") for s in sections]
    assert len(sections) == len(PAPER), titles
    for key, (func, test) in PAPER.items():
        match = [s for s, t in zip(sections, titles) if key in t and (key != "sigma score" or "ES" not in t)]
        assert match, f"no section for {key}: {titles}"
        sec = match[0]
        assert 'class="math' in sec, f"{key}: no equation"
        source = re.search(r'href="(_modules/[^"#]+)#[^"]*"><span class="viewcode-link"', sec)
        assert source and func in sec, f"{key}: no [source] link for {func}"
        module = (site / source.group(1)).read_text()
        assert re.search(rf'(def|class)</span>.{{0,60}}?<span class="n[cf]">{func}<', module), f"{key}: {func} not in its source page"
        assert re.search(rf'def</span>.{{0,60}}?<span class="nf">{test}<', sec), f"{key}: test {test} not shown"


def test_cli_page_shows_the_help_captured_at_build_time(site):
    text = (site / "cli.html").read_text()
    assert "usage: python -m minilr" in text and "--estimator" in text and "--checkpoint" in text


# -- the pages in a real browser ---------------------------------------------------------------------
def _browser():
    """A headless Chromium driven by Selenium, or (None, why not)."""
    try:
        from selenium import webdriver
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[docs]')"
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        return None, "no Chromium or chromedriver (apt-get install chromium chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the driver is given explicitly: Selenium Manager would try to download one
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path)), None


@pytest.fixture(scope="session")
def served(site):
    """The site over HTTP on 127.0.0.1 (MathJax loads its fonts and components like a real site)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# Awaits MathJax's typesetting and every image, then reports what went wrong on the page.
_INSPECT = r"""
const done = arguments[arguments.length - 1];
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const imgs = Array.from(document.images);
  for (const img of imgs) { img.loading = "eager"; }
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  const clone = document.body.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, textarea").forEach(e => e.remove());
  const text = clone.textContent;
  done({
    broken: imgs.filter(i => i.naturalWidth === 0).map(i => i.getAttribute("src")),
    mathNodes: document.querySelectorAll("span.math, div.math").length,
    typeset: document.querySelectorAll("mjx-container").length,
    texErrors: document.querySelectorAll("mjx-merror").length,
    rawTex: ["\\frac", "$$", "\\(", "\\[", ":math:", "\\mathcal", "\\sigma"].filter(s => text.includes(s)),
    mathjax: !!window.MathJax,
  });
})();
"""


def _dead_links(html: Path, page: Path):
    """Links from ``page`` to a file of the site that is missing, or to an anchor it does not have."""
    dead = []
    for href in _parse(page).links:
        url = urlparse(href)
        if url.scheme or url.netloc or href.startswith("mailto:"):
            continue  # external: not this test's business (and no network here)
        target_url, frag = urldefrag(href)
        target = (page.parent / unquote(target_url)).resolve() if target_url else page
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or html.resolve() not in target.parents:
            dead.append(href)
        elif frag and target.suffix == ".html" and unquote(frag) not in _parse(target).ids:
            dead.append(href)
    return dead


def test_every_page_in_headless_chromium(site, served):
    driver, why = _browser()
    if driver is None:
        pytest.skip(why)
    shots = Path(os.environ.get("MINILR_SCREENSHOTS", DOCS / "_build" / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    pages = _pages(site)
    assert len(pages) >= 20 + len(TUTORIALS), [p.name for p in pages]
    try:
        driver.set_script_timeout(60)
        for page in pages:
            rel = page.relative_to(site).as_posix()
            driver.get(urljoin(served, rel))
            report = driver.execute_async_script(_INSPECT)
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            bad = []
            if errors:
                bad.append(f"console errors {errors}")
            if report["broken"]:
                bad.append(f"images that did not load {report['broken']}")
            if report["rawTex"]:
                bad.append(f"raw TeX shown as text {report['rawTex']}")
            if report["texErrors"]:
                bad.append(f"{report['texErrors']} TeX errors")
            if report["mathNodes"] and (not report["mathjax"] or report["typeset"] < report["mathNodes"]):
                bad.append(f"math not typeset: {report['typeset']} of {report['mathNodes']}")
            dead = _dead_links(site, page)
            if dead:
                bad.append(f"dead internal links {dead}")
            if not driver.title:
                bad.append("no title")
            if bad:
                problems.append(f"{rel}: " + "; ".join(bad))
            if rel in ("index.html", "paper.html"):
                if report["typeset"] <= (0 if rel == "index.html" else 20):
                    problems.append(f"{rel}: too little math typeset ({report['typeset']})")
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(1280, min(height, 12_000))
                driver.save_screenshot(str(shots / f"{page.stem}.png"))
                driver.set_window_size(1280, 1000)
    finally:
        driver.quit()
    assert problems == [], "\n".join(problems)
    for name in ("index.png", "paper.png"):
        assert (shots / name).stat().st_size > 20_000, f"{name}: an empty screenshot"
