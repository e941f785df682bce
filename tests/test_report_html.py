"""The self-contained HTML report, rendered by headless Chromium: a non-blank page whose DOM
holds the tables (captions and cells) with the numbers of the store built in test_reports."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import subprocess  # noqa: E402
from html.parser import HTMLParser  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from tests.test_reports import build_store  # noqa: E402

from reports.render import render_report  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium absent (Debian: apt-get install -y chromium)")


class TableCells(HTMLParser):
    """caption text -> list of rows (lists of cell texts) for every <table> of a page; the caption's
    provenance line (its <span class="provenance">) goes to ``provenance`` under the same caption."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.provenance: dict[str, str] = {}
        self._caption, self._row, self._text, self._in, self._prov = None, None, "", None, None

    def handle_starttag(self, tag, attrs):
        if tag in ("caption", "td", "th"):
            self._in, self._text = tag, ""
        elif tag == "span" and self._in == "caption":
            self._prov = ""
        elif tag == "tr":
            self._row = []

    def handle_data(self, data):
        if self._prov is not None:
            self._prov += data
        elif self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "span" and self._prov is not None:
            self._prov, prov = None, self._prov
            self.provenance[self._text.strip()] = prov.strip()
        elif tag == "caption":
            self._caption = self._text.strip()
            self.tables[self._caption] = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._text.strip())
        elif tag == "tr" and self._caption is not None:
            self.tables[self._caption].append(self._row)
        if tag == self._in:
            self._in = None


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'chromium-profile'}", "--hide-scrollbars"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=90)


def test_report_html_in_chromium(tmp_path):
    store = build_store(tmp_path / "mlflow")
    report = render_report(None, store.uri, tmp_path / "out").html
    assert report == tmp_path / "out" / "report.html"
    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, "--window-size=1400,2400", "--virtual-time-budget=5000", f"--screenshot={shot}",
                     report.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1400)
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.03, "the screenshot is (nearly) blank"

    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    parser = TableCells()
    parser.feed(dom)
    t6 = parser.tables["Table 6: alignment of the two tasks"]
    t2 = parser.tables["Table 2: sample assignment (AP / AP50 / AP75)"]
    # the proxy's data: the paper's columns are labelled as COCO numbers, the caption says where ours come from
    assert t6[0][:4] == ["Method", "n", "AP", "AP (paper, COCO)"] and t6[0][-2:] == ["ΔAP", "ΔAP (paper, COCO)"]
    assert parser.provenance["Table 6: alignment of the two tasks"] == (
        "Data: synthetic proxy (data/proxy: n_train 600); profile proxy; 4 epochs; seeds 0,1,2; commit abc1234.")
    assert t6[1][:4] == ["parallel head + ATSS", "3", "21.0 ± 1.0 (3)", "39.2"]
    assert t6[3] == ["parallel head + TAL", "1", "20.5 †", "40.3", "0.330", "0.415", "0.510 †",
                     "0.643", "1,150", "30,506", "450", "15,927", "2,900", "72,320", "-0.5", "+1.1"]
    claims = parser.tables["All studies: the paper's claims, our verdicts"]
    assert claims[0] == ["Study", "Claim", "Metric", "Δ paper (COCO)", "Δ ours", "n", "95% CI", "Test", "Verdict"]
    assert claims[1][:2] == ["table2_assignment", "IoU-based < ATSS (AP)"] and claims[1][-1] == "inconclusive"
    # verdict cells carry their class: 3 in the summary's claims, 5 in table6's claims table (its 3 claims and
    # 2 comparisons on the paper's other columns)
    assert dom.count('<td class="agrees">agrees</td>') == 3 + 5
    # table6's section opens on its paper table, then its claims
    section = dom[dom.index('id="study-table6_alignment"'):]
    assert section.index('id="table6"') < section.index('id="table6_claims"') < section.index('class="meta"')
    assert t6[4][:4] == ["T-head + TAL", "0", "missing", "42.5"]
    assert [r[0] for r in t2[1:]] == ["IoU-based", "ATSS", "TAL", "center sampling", "centerness"]
    assert t2[3][:3] == ["TAL", "0 (1 failed)", "failed"] and t2[4][2] == "running"
    # the plots are inside the page (data URIs), not files next to it
    # table2 curves, table6 scatter + curves, smoke curves
    assert dom.count('src="data:image/png;base64,') == 4
    assert "6 finished, 1 failed, 0 running, of 12 planned" in dom
    assert "4 finished, 1 failed, 1 running, 1 interrupted, of 8 planned" in dom  # table2: the KILLED trial
