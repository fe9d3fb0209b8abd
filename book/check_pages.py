"""Open every page of the built book in headless Chromium, as a reader would, and fail on what a reader
would see broken: an image that did not load, a request that failed, a request that left the machine
(a CDN), a findings chapter without a figure, or a page showing its parameters cell twice. A full-page screenshot of each page is kept.

    python book/check_pages.py [--html book/_build/html] [--toc book/_toc.yml]

Chromium is Debian's (/usr/bin/chromium), driven by the `playwright` package; never `playwright install`.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import yaml

BOOK = Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", ".doctrees", "jupyter_execute"}

# Every image eager and decoded, MathJax finished, then the images that have no pixels.
SETTLE_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  return imgs.filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src') || i.currentSrc);
}"""
FIGURES_JS = "() => document.querySelectorAll('article img, article figure, article svg.figure').length"
# code cells that set the notebook's parameters: papermill's injected cell is the one a page should show (its
# defaults cell is tagged remove-cell), so a second one is a reading hazard
PARAMETERS_JS = ("() => [...document.querySelectorAll('article div.cell_input pre')]"
                 ".filter(p => /^\\s*profile\\s*=\\s*[\"']/m.test(p.textContent)).length")  # a literal: not the set-up's call


def findings_pages(toc: Path) -> set[str]:
    """The html paths of the chapters in the toc part captioned 'Findings'."""
    parts = yaml.safe_load(toc.read_text()).get("parts", [])
    files = [c["file"] for p in parts if p.get("caption") == "Findings" for c in p.get("chapters", [])]
    return {str(Path(f).with_suffix("")) + ".html" for f in files}


def serve(folder: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pages(html: Path) -> list[str]:
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not SKIP_DIRS.intersection(p.relative_to(html).parts[:-1]))


def check_page(browser, base: str, rel: str, shots: Path, needs_figure: bool, timeout_ms: int) -> list[str]:
    problems: list[str] = []
    off_host: set[str] = set()
    page = browser.new_page(viewport={"width": 1280, "height": 900})

    def route(r):
        url = urlsplit(r.request.url)
        if url.scheme in ("http", "https") and url.hostname not in LOCAL_HOSTS:
            off_host.add(r.request.url)
            problems.append(f"{rel}: request to another host: {r.request.url}")
            return r.abort()  # nothing leaves the machine, whatever the page asks for
        return r.continue_()

    def failed(req):
        if req.url not in off_host:  # an aborted off-host request is already reported
            problems.append(f"{rel}: request failed ({req.failure}): {req.url}")

    page.route("**/*", route)
    page.on("requestfailed", failed)
    page.on("response", lambda res: res.status >= 400 and problems.append(f"{rel}: HTTP {res.status}: {res.url}"))
    page.on("pageerror", lambda err: problems.append(f"{rel}: script error: {err}"))
    try:
        page.goto(base + rel, wait_until="networkidle", timeout=timeout_ms)
        problems += [f"{rel}: broken image: {src}" for src in page.evaluate(SETTLE_JS)]
        if needs_figure and page.evaluate(FIGURES_JS) == 0:
            problems.append(f"{rel}: findings page without a figure")
        if (shown := page.evaluate(PARAMETERS_JS)) > 1:
            problems.append(f"{rel}: {shown} parameters cells shown (one is papermill's injected copy)")
        page.screenshot(path=str(shots / (rel.replace("/", "__")[:-len(".html")] + ".png")), full_page=True)
    except Exception as err:  # a timeout or a crash is the page's problem, not the checker's
        problems.append(f"{rel}: could not load: {err}")
    finally:
        page.close()
    return problems


def check(html: Path, shots: Path, findings: set[str], chromium: str, timeout_ms: int) -> tuple[list[str], int]:
    """Returns (problems, pages checked); each problem names its page."""
    problems: list[str] = []
    shots.mkdir(parents=True, exist_ok=True)
    server = serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    todo = pages(html)
    from playwright.sync_api import sync_playwright  # here, so the book's tests need no browser

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for rel in todo:
                problems += check_page(browser, base, rel, shots, rel in findings, timeout_ms)
            browser.close()
    finally:
        server.shutdown()
    missing = findings - set(todo)
    problems += [f"{rel}: findings page was not built" for rel in sorted(missing)]
    return problems, len(todo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", type=Path, default=BOOK / "_build" / "html")
    ap.add_argument("--shots", type=Path, default=BOOK / "_build" / "screenshots")
    ap.add_argument("--toc", type=Path, default=BOOK / "_toc.yml")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per page")
    args = ap.parse_args(argv)
    if not (args.html / "index.html").exists():
        print(f"no built book at {args.html}: run `make html` first", file=sys.stderr)
        return 2
    problems, n = check(args.html, args.shots, findings_pages(args.toc), args.chromium, int(args.timeout * 1000))
    if problems:
        print(f"check_pages: {len(problems)} problem(s) on {n} page(s):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    print(f"check_pages: {n} page(s) OK; screenshots in {args.shots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
