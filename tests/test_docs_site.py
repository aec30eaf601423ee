"""The rendered documentation site (`make docs`) as a reader's browser shows it.

Builds the site (incrementally into build/html, as `make docs` does), serves it on 127.0.0.1 from
a local http.server thread, and opens every page in headless Chromium through playwright: each
page loads without a console error, a page error or a failed request, asks for nothing outside
the local server (MathJax included), shows every image, typesets every equation, and every
internal link points to a page and an anchor that exist. Skipped, saying why, where the docs
extra or a Chromium binary is missing (`make test` installs both where it runs as root).
"""
from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "html"
TUTORIALS = sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site: `python -m sphinx -b html -c docs . build/html`, failing on any warning."""
    pytest.importorskip("sphinx", reason="the docs extra is not installed: pip install -e '.[docs]' (make docs)")
    pytest.importorskip("myst_nb", reason="the docs extra is not installed: pip install -e '.[docs]' (make docs)")
    build = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-c", "docs", ".", str(SITE)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "sphinx warned:\n" + "\n".join(warnings)
    return SITE


@pytest.fixture(scope="module")
def base_url(site):
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


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install -e '.[dev]'")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium binary: install Debian's 'chromium' (make browser does, as root with apt)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _pages(site: Path) -> list[str]:
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if not p.relative_to(site).parts[0].startswith("_"))


@functools.lru_cache(maxsize=None)
def _ids(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\sid="([^"]+)"', path.read_text(encoding="utf-8")))


def _visit(browser, url: str) -> dict:
    """Open `url`; wait for MathJax's typesetting; return what the page showed and asked for."""
    page = browser.new_page()
    seen = {"console": [], "page_errors": [], "failed": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and seen["console"].append(f"{m.text} @ {m.location}"))
    page.on("pageerror", lambda e: seen["page_errors"].append(str(e)))
    page.on("requestfailed", lambda r: seen["failed"].append(f"{r.url}: {r.failure}"))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("response", lambda r: r.status >= 400 and seen["failed"].append(f"{r.url}: HTTP {r.status}"))
    page.goto(url, wait_until="load")
    try:  # MathJax loads asynchronously: wait until it has started, then until it has typeset the page
        page.wait_for_function("() => !document.querySelector('.math') || !!window.MathJax?.startup?.promise",
                               timeout=15_000)
        page.evaluate("() => window.MathJax?.startup?.promise?.then(() => true) ?? true")
    except Exception as error:  # noqa: BLE001 (reported with the page's other problems)
        seen["page_errors"].append(f"MathJax did not start: {error}")
    seen.update(page.evaluate("""() => ({
        images: [...document.images].map(i => ({src: i.currentSrc, ok: i.complete && i.naturalWidth > 0})),
        math: document.querySelectorAll('.math').length,
        typeset: [...document.querySelectorAll('.math')].filter(m => m.querySelector('mjx-container')).length,
        mathjax: !!document.querySelector('mjx-container'),
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        title: document.title,
    })"""))
    page.close()
    return seen


def test_every_page_renders_offline_with_figures_equations_and_links(browser, site, base_url):
    pages = _pages(site)
    assert {f"notebooks/{t}.html" for t in TUTORIALS} <= set(pages), pages
    problems, tutorial_images, tutorial_math = [], {}, {}
    page = browser.new_page()
    page.goto(base_url)
    page.wait_for_url(urljoin(base_url, "docs/index.html"))   # the site root redirects to the start page
    page.close()
    for rel in (p for p in pages if p != "index.html"):
        seen = _visit(browser, urljoin(base_url, rel))
        problems += [f"{rel}: console error: {c}" for c in seen["console"]]
        problems += [f"{rel}: page error: {e}" for e in seen["page_errors"]]
        problems += [f"{rel}: failed request: {f}" for f in seen["failed"]]
        problems += [f"{rel}: asked outside the local site: {u}" for u in seen["requests"]
                     if not (u.startswith(base_url) or u.startswith("data:"))]
        problems += [f"{rel}: image not shown: {i['src']}" for i in seen["images"] if not i["ok"]]
        if seen["typeset"] != seen["math"]:
            problems.append(f"{rel}: {seen['math'] - seen['typeset']} of {seen['math']} equations not typeset")
        for link in seen["links"]:
            if not link.startswith(base_url):
                continue
            parts = urlsplit(link)
            target = site / unquote(parts.path[len(urlsplit(base_url).path):])
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                problems.append(f"{rel}: broken link {link}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
                problems.append(f"{rel}: link to a missing anchor {link}")
        stem = Path(rel).stem
        if rel.startswith("notebooks/") and stem in TUTORIALS:
            tutorial_images[stem] = len(seen["images"])
            tutorial_math[stem] = seen["typeset"]
    assert not problems, "\n".join(problems)
    # The tutorials' figures and equations are there: as many images as the notebook has image outputs,
    # and typeset equations on every tutorial whose markdown has any.
    for stem in TUTORIALS:
        nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text(encoding="utf-8"))
        figures = sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))
        has_math = any("$" in "".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "markdown")
        assert tutorial_images[stem] >= figures, (stem, tutorial_images[stem], figures)
        assert tutorial_math[stem] > 0 or not has_math, stem
    assert sum(tutorial_images.values()) > 0 and sum(tutorial_math.values()) > 0
