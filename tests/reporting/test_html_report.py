"""`cvstream report --html`: one self-contained page (plots as data URIs, tables, scenario, costs, timeline)
that opens offline, checked as text and in a real headless Chromium."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from cvstream import cli
from cvstream.simulator import Simulator
from conftest import tiny_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "run"
    Simulator(tiny_scenario(evaluation={"probe_items": 16}), out_dir=out).run()
    # a stand-in timeline.parquet: the page summarises whatever table the timeline wrote
    pd.DataFrame({"hours": [0.0, 6.0, 12.0], "recall@1_all": [0.1, 0.25, 0.4], "event": ["start", "deploy", "eval"]}).to_parquet(
        out / "timeline.parquet"
    )
    return out


@pytest.fixture(scope="module")
def page(run_dir):
    assert cli.main(["report", str(run_dir), "--html"]) == 0
    return run_dir / "report" / "report.html"


class _Page(HTMLParser):
    """Tags with their attributes, table captions and the text of the page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.captions: list[str] = []
        self.text: list[str] = []
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_caption = tag == "caption"
        if tag == "caption":
            self.captions.append("")

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_caption:
            self.captions[-1] += data


def _parse(path: Path) -> _Page:
    parsed = _Page()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def test_the_page_embeds_every_plot_and_holds_the_tables_scenario_costs_and_timeline(run_dir, page):
    parsed = _parse(page)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    pngs = sorted((run_dir / "report").glob("*.png"))
    assert len(pngs) >= 3 and len(images) == len(pngs)
    embedded = {base64.b64decode(src.split(",", 1)[1]) for src in images if src.startswith("data:image/png;base64,")}
    assert embedded == {p.read_bytes() for p in pngs} and all(data[:8] == PNG_SIGNATURE for data in embedded)
    captions = " | ".join(parsed.captions)
    for title in ("R@1 against the mixed gallery", "compatibility C[i][j]", "costs over the run by phase",
                  "metrics per session against the mixed gallery", "costs per session and phase", "timeline.parquet: 3 rows x 3 columns"):
        assert title in captions, title
    text = " ".join(" ".join(parsed.text).split())
    assert "backbone_flops" in text and "recall@1" in text and "map@r" in text
    assert "name: synthetic" in text and "setup: disjoint" in text  # the scenario, as YAML
    costs = pd.read_parquet(run_dir / "costs.parquet")
    assert f"{int(costs.backbone_flops.iloc[0]):,}" in text


def test_the_page_needs_nothing_from_outside(page):
    source = page.read_text(encoding="utf-8")
    parsed = _parse(page)
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "srcset", "data", "poster", "action"):
            value = attrs.get(name)
            assert value is None or value.startswith(("data:", "#")), f"<{tag} {name}={value[:60]!r}>"
        assert tag not in ("link", "iframe", "object", "embed", "base")
    assert not re.search(r"url\(|@import", source)
    assert "<script" not in source


def test_a_report_of_a_run_without_html_writes_no_page(run_dir, tmp_path):
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "report.html").exists()


def _chromium() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


# Written into a copy of the page: after load, how many images decoded, and how many tables and rows there are.
PROBE = """<script>
window.addEventListener("load", function () {
  var shown = Array.from(document.images).filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = "images " + shown + " of " + document.images.length + "; tables " + document.querySelectorAll("table").length
    + "; rows " + document.querySelectorAll("tbody tr").length + "; width " + document.documentElement.scrollWidth;
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="no Chromium (/usr/bin/chromium or chromium on PATH)")
def test_the_page_renders_in_a_headless_chromium(page, tmp_path):
    browser = _chromium()
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000"]
    env = {**os.environ, "HOME": str(tmp_path)}  # Chromium's profile goes to a throwaway home
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'<pre id="probe">images (\d+) of (\d+); tables (\d+); rows (\d+); width (\d+)</pre>', dom.stdout)
    assert found, dom.stdout[-2000:]
    shown, images, tables, rows, width = map(int, found.groups())
    assert images >= 3 and shown == images  # every embedded plot decoded
    assert tables >= 6 and rows >= 20
    assert width <= 1200  # nothing wider than the window: wide tables scroll inside their box
    assert "costs per session and phase" in dom.stdout and "name: synthetic" in dom.stdout
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and shot.read_bytes()[:8] == PNG_SIGNATURE, done.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one
