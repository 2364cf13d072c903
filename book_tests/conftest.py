"""A summary of what the browser test looked at, printed after the run (from _build/browser/report.json)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html").resolve().parent / "browser" / "report.json"


def pytest_sessionstart(session):
    session.config._book_browser_t0 = time.time()


def pytest_terminal_summary(terminalreporter, config):
    if not REPORT.is_file() or REPORT.stat().st_mtime < getattr(config, "_book_browser_t0", 0):
        return  # this run did not visit the book
    report = json.loads(REPORT.read_text())
    pages = report["pages"]
    ok = [f for f in pages.values() if "visit_error" not in f]

    def total(key):
        return sum(len(f[key]) if isinstance(f[key], list) else f[key] for f in ok)

    tables = [t for f in ok for t in f["tables"]]
    shown = [t for t in tables if not t.get("hidden")]
    wide = [t for t in shown if not t["fits"]]
    tr = terminalreporter
    tr.section("the book in Chromium")
    tr.write_line(f"{len(pages)} pages in {report['seconds']} s at {report['viewport']['width']}x"
                  f"{report['viewport']['height']} (screenshots and report.json in {REPORT.parent})")
    tr.write_line(f"math: {total('math_nodes')} nodes, {total('math_nodes') - total('math_untypeset')} typeset, "
                  f"{total('math_containers')} mjx-container, {total('math_errors')} TeX errors, "
                  f"{total('math_raw')} raw-TeX places")
    tr.write_line(f"images: {total('images')} ({sum(not i['ok'] for f in ok for i in f['images'])} not loaded); "
                  f"links: {total('links')}; widget views: {total('widget_views')}")
    tr.write_line(f"tables: {len(tables)} ({len(tables) - len(shown)} hidden), {len(wide)} wider than the column "
                  f"({sum(t['scroller_fits'] for t in wide)} of them in a scrolling container that fits); "
                  f"Markdown tables left as text: {total('raw_tables')}")
    tr.write_line(f"console errors: {total('console')}; requests to other hosts blocked: {total('external')}; "
                  f"failed local requests: {total('failed_local')}")
