r"""The built book (_build/html) in a real browser: every page opened in headless Chromium, offline.

Not part of tests/: it needs the built book, so it runs as its own stage after the book build
(`pytest book_tests -q`; set-up: `bash tools/install_browser.sh`). The book is served from a
thread on 127.0.0.1 (random free port); every request to any other host is blocked and recorded.

Each page is opened once (a fresh browser context each, i.e. a first visit), its findings collected
(all of them in _build/browser/report.json) and a full-page screenshot saved to
_build/browser/<page>.png; then one test per check asserts over all pages at once, so one run
reports every failure:

  console   no console error, no uncaught exception (page error)
  network   nothing requested from another host; no failed (>= 400) local request
  images    every <img> loaded (naturalWidth > 0)
  links     every local link (a[href], any file, with or without #anchor) resolves to an existing
            file, and its #anchor to an id in that file
  math      after MathJax has finished: every Sphinx math node (span.math, div.math) holds a typeset
            mjx-container without a TeX error, and no raw TeX is left in the visible text of the
            article outside code: no \( \[ $$, no TeX command (\begin, \nabla, ...), no short
            $...$ span (a formula MyST did not parse stays $...$ text: MathJax is configured by
            Sphinx for \( \) and \[ \] only)
  widgets   every embedded widget view is rendered, visible, with non-zero size; sin5x.html (its
            `interact`: toggle buttons, a selection slider, an output with the plot) must have one
  tables    every visible table in the article is at most as wide as the article's column (+1 px),
            or sits in a horizontally scrollable container that fits the column; and no Markdown
            table was left as text (a |---| row in the visible text outside code)
  screenshots  a non-empty PNG per page

Pages: every .html under _build/html except folders starting with "_" (_static, _sources,
_images: assets, not pages), genindex.html, search.html, py-modindex.html (generated indexes) and
redirect-only pages (index.html is a <meta http-equiv="refresh"> to the first chapter).
Environment: CHROMIUM (default /usr/bin/chromium), BOOK_HTML (default _build/html),
BOOK_VIEWPORT (default 1280x900).
"""
from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html").resolve()
SHOTS = HTML.parent / "browser"  # _build/browser beside _build/html
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
VIEWPORT = dict(zip(("width", "height"), map(int, os.environ.get("BOOK_VIEWPORT", "1280x900").split("x"))))
EXCLUDED_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
WIDGET_PAGE = "notebooks/sin5x.html"
MATHJAX_TIMEOUT_MS = 20_000
WIDGET_TIMEOUT_MS = 15_000

CHECKS = ["console", "network", "images", "links", "math", "widgets", "tables", "screenshots"]


def book_pages() -> list[str]:
    """The book's pages, as paths relative to HTML (see the module docstring for what is left out)."""
    pages = []
    for path in sorted(HTML.rglob("*.html")):
        rel = path.relative_to(HTML).as_posix()
        if any(part.startswith("_") for part in rel.split("/")[:-1]) or rel in EXCLUDED_PAGES:
            continue
        head = path.read_text(encoding="utf-8", errors="replace")[:4000].lower()
        if re.search(r"<meta[^>]+http-equiv=[\"']?refresh", head):
            continue  # a redirect, not a page
        pages.append(rel)
    return pages


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no access log on stderr
        pass


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").is_file():
        pytest.fail(f"no built book at {HTML}: build it first (make book, or "
                    "jupyter-book build --all -W --keep-going .)")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)


@functools.cache
def ids_in(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


# Run in the page once it has loaded, MathJax has finished and widgets have had their chance.
COLLECT_JS = r"""
async () => {
  const VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]';
  const visible = (el) => el && el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
  const brief = (s, n = 70) => (s || "").replace(/\s+/g, " ").trim().slice(0, n);
  const out = {};

  // images: wait for the ones still loading (a lazy one is made eager first)
  const imgs = [...document.images];
  imgs.forEach((img) => { if (img.loading === "lazy") img.loading = "eager"; });
  await Promise.race([
    Promise.all(imgs.map((img) => img.complete ? null :
      new Promise((r) => { img.addEventListener("load", r); img.addEventListener("error", r); }))),
    new Promise((r) => setTimeout(r, 5000)),
  ]);
  out.images = imgs.map((img) => ({src: img.currentSrc || img.src, ok: img.complete && img.naturalWidth > 0,
                                   alt: brief(img.alt, 40)}));

  // links: every a[href], resolved by the browser
  out.links = [...document.querySelectorAll("a[href]")].map((a) => a.href);

  // math: Sphinx's math nodes, each should hold an mjx-container (MathJax 3 keeps the node)
  const nodes = [...document.querySelectorAll("span.math, div.math")];
  out.math_nodes = nodes.length;
  out.math_containers = document.querySelectorAll("mjx-container").length;
  out.math_untypeset = nodes.filter((n) => !n.querySelector("mjx-container")).map((n) => brief(n.textContent));
  out.math_errors = [...document.querySelectorAll("mjx-merror")].map((e) =>
    brief(e.getAttribute("data-mjx-error") || e.textContent));
  out.mathjax = window.MathJax && window.MathJax.version ? String(window.MathJax.version) : null;

  // raw TeX delimiters left in the visible article text (code and typeset math left out)
  const article = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const skip = "pre, code, kbd, samp, script, style, textarea, mjx-container, .highlight";
  const raw = [];
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    const el = t.parentElement;
    if (!el || el.closest(skip) || !visible(el)) continue;
    // \( \[ $$, any TeX command (\begin, \nabla, ...) outside typeset math, or a short $...$ span
    // (MathJax, as Sphinx configures it, does not look for $ delimiters)
    const m = t.nodeValue.match(/\\\(|\\\[|\$\$|\\[a-zA-Z]{2,}|(?:^|\s)\$[^$\s][^$\n]{0,80}\$(?![\w$])/);
    if (m) raw.push(brief(t.nodeValue.slice(Math.max(0, m.index - 20)), 60));
  }
  out.math_raw = raw;

  // widgets: each embedded view (a script of this type); the manager renders it into a
  // div.widget-subarea it inserts just before the script
  const size = (el) => { const r = el.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  out.widget_views = [...document.querySelectorAll(VIEW)].map((script) => {
    const area = script.previousElementSibling;
    const el = area && area.matches(".widget-subarea") ? area.querySelector(".jupyter-widgets") : null;
    return el ? {cls: brief(el.className, 120), size: size(el), visible: visible(el)} : {cls: null, size: [0, 0], visible: false};
  });
  const present = (sel) => [...document.querySelectorAll(sel)].some((el) => visible(el) && size(el)[0] * size(el)[1] > 0);
  out.widget_parts = {
    toggle_buttons: present(".widget-toggle-buttons"),
    slider: present(".widget-slider, .widget-hslider, .jupyter-widget-slider"),
    output_image: [...document.querySelectorAll(".jupyter-widgets img, .widget-output img")]
      .some((img) => img.naturalWidth > 0 && visible(img)),
  };

  // Markdown tables left as text (their |---| row, smartquotes may have made it |—|)
  out.raw_tables = [...article.querySelectorAll("p, li, dd, dt, td, th, div.line, blockquote")]
    .filter((el) => !el.closest(skip) && visible(el) && /\|\s*:?[-—–]+:?\s*\|/.test(el.innerText))
    .filter((el, _, all) => !all.some((o) => o !== el && o.contains(el)))
    .map((el) => brief(el.innerText, 80));

  // tables in the article against the article's content width
  const cs = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  out.column_width = Math.round(column);
  out.tables = [...article.querySelectorAll("table")].map((table) => {
    const width = table.getBoundingClientRect().width;
    const caption = brief((table.querySelector("caption, th, td") || table).textContent, 50);
    if (!visible(table)) return {caption, width: 0, hidden: true};
    let scroller = null;
    for (let el = table.parentElement; el && el !== article; el = el.parentElement) {
      const ox = getComputedStyle(el).overflowX;
      if (ox === "auto" || ox === "scroll") { scroller = el; break; }
    }
    return {caption, width: Math.round(width * 10) / 10, fits: width <= column + 1,
            scroller: scroller ? Math.round(scroller.getBoundingClientRect().width * 10) / 10 : null,
            scroller_fits: scroller ? scroller.getBoundingClientRect().width <= column + 1 : false};
  });
  return out;
}
"""

WAIT_MATHJAX_JS = """
async (timeout) => {
  const mj = window.MathJax;
  if (!(mj && mj.startup && mj.startup.promise)) return "absent";
  const timer = new Promise((r) => setTimeout(() => r("timeout"), timeout));
  return Promise.race([mj.startup.promise.then(() => "done", (e) => "failed: " + e), timer]);
}
"""

WIDGETS_RENDERED_JS = """
() => [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')].every((s) => {
  const area = s.previousElementSibling;
  return Boolean(area && area.matches(".widget-subarea") && area.querySelector(".jupyter-widgets"));
})
"""


@pytest.fixture(scope="module")
def visits(server):
    """{page: findings} for every book page, from one headless Chromium."""
    try:  # a failure, not a skip: a stage that skips everything would pass
        from playwright import sync_api as playwright_api
    except ImportError:
        pytest.fail("the Python package playwright is missing: run tools/install_browser.sh")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run tools/install_browser.sh")
    pages = book_pages()
    assert pages, f"no pages found under {HTML}"
    shutil.rmtree(SHOTS, ignore_errors=True)
    local = urlsplit(server).netloc
    results: dict[str, dict] = {}
    t_all = time.monotonic()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--disable-gpu", "--disable-quic", "--no-first-run",
                                           "--disable-background-networking", "--disable-component-update",
                                           "--disable-sync"])
        try:
            for rel in pages:
                results[rel] = visit(browser, server, local, rel)
        finally:
            browser.close()
    report = {"seconds": round(time.monotonic() - t_all, 1), "viewport": VIEWPORT, "pages": results}
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return results


def visit(browser, server: str, local: str, rel: str) -> dict:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    t0 = time.monotonic()
    found = {"console": [], "external": [], "failed_local": []}
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")

    def route(r):
        if urlsplit(r.request.url).netloc == local:
            r.continue_()
        else:
            found["external"].append(r.request.url)
            r.abort("blockedbyclient")

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and found["console"].append(
        f"console.error: {m.text[:300]}" + (f" ({m.location.get('url', '')})" if m.location.get("url") else "")))
    page.on("pageerror", lambda e: found["console"].append(f"uncaught: {str(e)[:300]}"))
    page.on("response", lambda r: urlsplit(r.url).netloc == local and r.status >= 400 and found["failed_local"].append(
        f"{r.status} {r.url.split(local, 1)[1]}"))
    page.on("requestfailed", lambda r: urlsplit(r.url).netloc == local and found["failed_local"].append(
        f"{r.failure} {r.url.split(local, 1)[1]}"))
    try:
        page.goto(f"{server}/{rel}", wait_until="load", timeout=30_000)
        found["mathjax_wait"] = page.evaluate(WAIT_MATHJAX_JS, MATHJAX_TIMEOUT_MS)
        if page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count():
            with contextlib.suppress(PlaywrightTimeout):  # reported by the widgets check
                page.wait_for_function(WIDGETS_RENDERED_JS, timeout=WIDGET_TIMEOUT_MS)
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_load_state("networkidle", timeout=5_000)
        page.evaluate("document.fonts.ready.then(() => null)")
        found.update(page.evaluate(COLLECT_JS))
        shot = SHOTS / (rel[: -len(".html")] + ".png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        found["screenshot"] = str(shot) if shot.is_file() and shot.stat().st_size else None
    except PlaywrightError as exc:  # a page that cannot be visited fails every check, with the reason
        found["visit_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    finally:
        context.close()
    found["seconds"] = round(time.monotonic() - t0, 2)
    return found


def broken_link(url: str, server: str) -> str | None:
    """Why a local link does not resolve, or None (links to other hosts are not followed)."""
    if not url.startswith(server + "/"):
        return None
    parts = urlsplit(url)
    path = unquote(parts.path)
    target = HTML / path.lstrip("/")
    if path.endswith("/"):
        target = target / "index.html"
    if not target.resolve().is_relative_to(HTML) or not target.is_file():
        return f"{path}: no such file"
    if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in ids_in(target):
        return f"{path}#{parts.fragment}: no such anchor"
    return None


def problems(check: str, page: str, f: dict, server: str) -> list[str]:
    if "visit_error" in f:
        return [f"could not be checked: {f['visit_error']}"]
    if check == "console":
        return f["console"]
    if check == "network":
        return ([f"requested from another host (blocked): {u}" for u in dict.fromkeys(f["external"])]
                + [f"failed local request: {x}" for x in dict.fromkeys(f["failed_local"])])
    if check == "images":
        return [f"image did not load: {i['src'][:120]}" for i in f["images"] if not i["ok"]]
    if check == "links":
        return list(dict.fromkeys(filter(None, (broken_link(u, server) for u in f["links"]))))
    if check == "math":
        out = []
        if f["math_untypeset"]:
            out.append(f"{len(f['math_untypeset'])} of {f['math_nodes']} math nodes not typeset "
                       f"(MathJax {f['mathjax'] or 'not loaded'}, wait: {f['mathjax_wait']}), first: "
                       + " | ".join(f["math_untypeset"][:3]))
        if f["math_containers"] < f["math_nodes"]:
            out.append(f"{f['math_containers']} mjx-container < {f['math_nodes']} math nodes")
        out += [f"MathJax error: {e}" for e in f["math_errors"]]
        if f["math_raw"]:
            out.append(f"raw TeX in the visible text ({len(f['math_raw'])} places), first: "
                       + " | ".join(f["math_raw"][:3]))
        return out
    if check == "widgets":
        out = []
        for i, w in enumerate(f["widget_views"], 1):
            if not w["cls"]:
                out.append(f"widget view {i} of {len(f['widget_views'])} not rendered (no .jupyter-widgets element)")
            elif not (w["visible"] and w["size"][0] * w["size"][1] > 0):
                out.append(f"widget view {i} of {len(f['widget_views'])} invisible or empty "
                           f"(size {w['size'][0]}x{w['size'][1]} px, {w['cls']})")
        if page == WIDGET_PAGE:
            if not f["widget_views"]:
                out.append("no embedded widget view (the interact's state was not saved in the build)")
            out += [f"widget part missing or invisible: {part}"
                    for part, ok in f["widget_parts"].items() if not ok]
        return out
    if check == "tables":
        return [f"table '{t['caption']}' is {t['width']} px wide, column {f['column_width']} px"
                + (f" (its scrolling container is {t['scroller']} px)" if t["scroller"] else ", not scrollable")
                for t in f["tables"] if not t.get("hidden") and not t["fits"] and not t["scroller_fits"]] + [
                f"Markdown table not rendered (left as text): {x}" for x in f["raw_tables"]]
    if check == "screenshots":
        return [] if f.get("screenshot") else ["no screenshot written"]
    raise ValueError(check)


@pytest.mark.parametrize("check", CHECKS)
def test_book_in_browser(check, visits, server):
    failures = {page: p for page, f in visits.items() if (p := problems(check, page, f, server))}
    if check == "widgets":
        assert WIDGET_PAGE in visits, f"{WIDGET_PAGE} is not among the book's pages"
    if failures:  # the message alone (no traceback with the whole findings dict)
        n = sum(map(len, failures.values()))
        pytest.fail(f"{check}: {n} problem(s) on {len(failures)} of {len(visits)} page(s)\n"
                    + "\n".join(f"  {page}: {p}" for page, ps in failures.items() for p in ps), pytrace=False)
