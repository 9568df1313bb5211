"""The docs site builds with --strict and reads as a person would see it.

The site (mkdocs.yml) is built into a temporary folder, or taken from MLA_DOCS_SITE when the caller built it
already (`make docs` writes site/). Every page's internal links and images must point at built files. Then the
overview page and one notebook page are opened in headless Chromium (Debian's `chromium` package), served from
127.0.0.1 with every other host unreachable, as a reader would open them: both must show their title, every image
must have loaded (naturalWidth > 0) and every link must resolve. Screenshots go to MLA_DOCS_SCREENSHOTS if set.
Without Chromium the browser tests are skipped, except in CI (CI=true), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs site needs the dev extra (mkdocs, mkdocs-material, ...)")
pytest.importorskip("mkdocs_jupyter", reason="the docs site needs mkdocs-jupyter (dev extra)")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs site needs mkdocstrings[python] (dev extra)")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The notebook opened in the browser: the kernel notebook (plots of the committed GPU results), else the last one.
BROWSER_NOTEBOOK = next((p for p in NOTEBOOKS if p.name.startswith("05_")), NOTEBOOKS[-1] if NOTEBOOKS else None)
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _needs_chromium() -> None:
    if CHROMIUM:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must run the browser tests: install Debian's chromium package (.ci/run does)")
    pytest.skip("headless Chromium not found (apt-get install chromium); CI runs these tests")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    given = os.environ.get("MLA_DOCS_SITE")
    if given:
        path = Path(given).resolve()
        assert (path / "index.html").is_file(), f"MLA_DOCS_SITE={given} holds no built site (no index.html)"
        return path
    path = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return path


def _notebook_title(path: Path) -> str:
    cell = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "markdown")
    first = "".join(cell["source"]).lstrip().splitlines()[0]
    assert first.startswith("# "), f"{path.name}: the first markdown cell should open with the notebook's title"
    return first[2:].strip()


def _page_of(site: Path, notebook: Path) -> Path:
    return site / "notebooks" / f"{notebook.stem}.html"


# ---------------------------------------------------------------------------------------------- static checks

class _Refs(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and ((name == "href" and tag in ("a", "link")) or (name == "src" and tag in ("img", "script"))):
                self.refs.append(value)


def _internal_target(page: Path, ref: str, site: Path) -> Path | None:
    """The file a relative link of `page` points at, or None for external links, data: URIs and bare anchors."""
    parts = urllib.parse.urlsplit(ref)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    target = (site / parts.path.lstrip("/")) if parts.path.startswith("/") else (page.parent / parts.path)
    target = Path(os.path.normpath(urllib.parse.unquote(str(target))))
    return target / "index.html" if parts.path.endswith("/") else target


def test_site_builds_strict_with_every_page(site):
    assert (site / "index.html").is_file()
    for page in ("math.html", "absorption.html", "paging.html", "kernel.html", "fp8.html", "glossary.html",
                 "no-gpu.html", "results/index.html", "results/tables.html", "reference/index.html",
                 "reference/config.html", "reference/kernels.html"):
        assert (site / page).is_file(), f"the site has no {page}"


def test_every_notebook_is_a_page_in_the_nav(site):
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb found"
    index = (site / "index.html").read_text()
    for nb in NOTEBOOKS:
        page = _page_of(site, nb)
        assert page.is_file(), f"{nb.name} was not rendered to {page.relative_to(site)}"
        assert f'href="notebooks/{page.name}"' in index, f"the nav does not list {nb.name}"
        text = page.read_text()
        assert "jupyter-wrapper" in text and _notebook_title(nb).split(":")[0] in text


def test_every_internal_link_and_image_resolves(site):
    broken = []
    for page in sorted(site.rglob("*.html")):
        parser = _Refs()
        parser.feed(page.read_text())
        for ref in parser.refs:
            target = _internal_target(page, ref, site)
            if target is not None and not target.is_file():
                broken.append(f"{page.relative_to(site)}: {ref}")
    assert not broken, "links or images to files the site does not have:\n" + "\n".join(broken[:50])


def test_api_reference_is_written_from_docstrings(site):
    text = (site / "reference" / "stage2_absorbed.html").read_text()
    assert "AbsorbedMLA" in text and "absorb_query" in text, "mkdocstrings wrote no API for stage 2"


def test_results_tables_come_from_the_committed_files(site):
    """The generated tables quote the files: a number read from one must appear on the page, with the file linked."""
    text = (site / "results" / "tables.html").read_text()
    tours = sorted((ROOT / "docs" / "results").glob("decode_tour_*.json"))
    assert tours, "no decode_tour_*.json in docs/results"
    tour = json.loads(tours[-1].read_text())
    last = max((s for s in tour["stages"] if s["decode"]), key=lambda s: s["stage"])  # the kernel: < 10 ms
    step = last["decode"][0]
    assert f"{step['tokens_per_s']:,.0f}" in text and f"{step['latency_ms']:.3f}" in text
    assert f'href="{tours[-1].name}"' in text
    index = (site / "index.html").read_text()
    assert f"{step['latency_ms']:.3f}" in index, "the overview's ladder table is missing"
    assert f'href="results/{tours[-1].name}"' in index


# ---------------------------------------------------------------------------------------------- in a browser

# Served next to the site: opens the page under test in a same-origin iframe, waits for its images, and writes
# what a reader would see (title, headings, images and whether they loaded, link targets) into <pre id="report">.
_CHECK_PAGE = """<!doctype html><html><body><pre id="report">pending</pre><script>
const page = new URLSearchParams(location.search).get('page');
const frame = document.createElement('iframe');
frame.style.width = '1280px'; frame.style.height = '2400px';
frame.onload = async () => {
  const doc = frame.contentDocument;
  const imgs = Array.from(doc.images);
  imgs.forEach(img => { img.loading = 'eager'; });
  await Promise.all(imgs.map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  const h1 = doc.querySelector('article h1, .md-content h1');
  document.getElementById('report').textContent = JSON.stringify({
    title: doc.title,
    h1: h1 ? h1.textContent : null,
    images: imgs.map(img => ({src: img.currentSrc.slice(0, 120), complete: img.complete, width: img.naturalWidth})),
    links: Array.from(doc.querySelectorAll('a[href]')).map(a => a.href),
    assets: Array.from(doc.querySelectorAll('link[href][rel=stylesheet], script[src]')).map(e => e.href || e.src),
    styled: getComputedStyle(doc.querySelector('.md-header') || doc.body).position,
  });
};
frame.src = page;
document.body.appendChild(frame);
</script></body></html>"""


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/__check__.html"):
            body = _CHECK_PAGE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _chromium(args: list[str], profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
           # the site must read offline: every host but the test server fails at once
           "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def _shot_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("MLA_DOCS_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _read_in_browser(server: str, rel: str, site: Path, tmp_path: Path, shot: str) -> dict:
    url = f"{server}/__check__.html?page=/{rel}"
    dom = _chromium(["--virtual-time-budget=30000", "--dump-dom", url], tmp_path / "profile-dom")
    start, end = dom.find('<pre id="report">'), dom.find("</pre>")
    report = html.unescape(dom[start + len('<pre id="report">'):end]) if start >= 0 else "no report"
    assert report.startswith("{"), f"the check page did not report on /{rel}: {report[:300]}"
    png = _shot_dir(tmp_path) / shot
    _chromium(["--window-size=1280,1600", "--virtual-time-budget=10000", f"--screenshot={png}", f"{server}/{rel}"],
              tmp_path / "profile-shot")
    assert png.is_file() and png.stat().st_size > 10_000, f"no screenshot of /{rel}"
    return json.loads(report)


def _check_report(report: dict, server: str, site: Path, rel: str) -> None:
    assert report["styled"] in ("sticky", "fixed"), f"/{rel}: the theme's stylesheet was not applied"
    bad_imgs = [i for i in report["images"] if not (i["complete"] and i["width"] > 0)]
    assert not bad_imgs, f"/{rel}: images that did not load: {bad_imgs}"
    broken = []
    for url in report["links"] + report["assets"]:
        parts = urllib.parse.urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != server:
            continue
        path = urllib.parse.unquote(parts.path).lstrip("/")
        target = site / path / "index.html" if path.endswith("/") or not path else site / path
        if not target.is_file():
            broken.append(url)
    assert not broken, f"/{rel}: links to pages or files that were not built: {broken}"


def test_overview_page_in_chromium(site, server, tmp_path):
    _needs_chromium()
    report = _read_in_browser(server, "index.html", site, tmp_path, "docs_index.png")
    assert report["title"].startswith("mla-tutorial"), report["title"]
    assert report["h1"] and report["h1"].replace("¶", "").strip() == "mla-tutorial", report["h1"]
    assert any(i["src"].endswith("_latency.png") for i in report["images"]), "the ladder figure is not on the page"
    assert len(report["links"]) > 20, "the overview should link the pages, notebooks and results"
    _check_report(report, server, site, "index.html")


def test_notebook_page_in_chromium(site, server, tmp_path):
    _needs_chromium()
    assert BROWSER_NOTEBOOK is not None
    rel = _page_of(site, BROWSER_NOTEBOOK).relative_to(site).as_posix()
    report = _read_in_browser(server, rel, site, tmp_path, f"docs_{BROWSER_NOTEBOOK.stem}.png")
    title = _notebook_title(BROWSER_NOTEBOOK)
    assert report["h1"] and report["h1"].replace("¶", "").strip() == title, (report["h1"], title)
    assert report["title"].startswith(title), report["title"]
    assert report["images"], f"{BROWSER_NOTEBOOK.name}: no image on its page (its plots should be there)"
    _check_report(report, server, site, rel)
