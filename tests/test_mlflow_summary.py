"""The study's answer in the MLflow UI, in a real browser: a real ``mlflow server`` on 127.0.0.1
(its own sqlite store), two launches of the smoke grid on seeds 0, 1 laid out by the launcher
(orchestration.tracking, over the server's REST API), then ``tood-ablate report smoke`` against
the server, then headless Chromium (playwright driving the Debian ``chromium``):

* the address the report prints opens the runs page on the summary run, whose one row shows each
  grid row's mean AP (the latest launch's, worked out by hand) with nothing to unfold;
* the summary run's artifact viewer renders the report (its title inside the viewer's iframe);
* "Group by" tag tood.row gives one group per grid row, and the by-row view's group averages
  equal the summary's means.

Screenshots go to the test's tmp dir and to /tmp/mlflow_summary_*.png."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestration.mlflow_ui import ROWS_VIEW, run_url, runs_url, view_url  # noqa: E402
from reports.render import main  # noqa: E402
from reports.summary_run import summary_address, summary_runs  # noqa: E402
from tests.test_mlflow_ui import CHROMIUM, Server, _free_port  # noqa: E402
from tests.test_summary_run import FIRST, NAMES, ROWS, SECOND, expected, launch  # noqa: E402

pytestmark = pytest.mark.slow
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SUMMARY = "summary: smoke"
TITLE = "TOOD ablation report: smoke"


def _shot(page, tmp_path: Path, name: str) -> None:
    """Screenshot into the test's tmp dir and beside it /tmp/mlflow_summary_<name>.png for a person to
    look at; the UI's assistant panel closed first, so that the table gets the width."""
    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
        page.wait_for_timeout(1000)
    page.screenshot(path=str(tmp_path / f"{name}.png"))
    shutil.copy(tmp_path / f"{name}.png", f"/tmp/mlflow_summary_{name}.png")


def _cell(page, row_id: str, column: str):
    """The runs table's cell of ``column`` (a column id) in the row ``row_id``: a run id, or
    ``tag.<tag>.<value>`` for a group (the grid splits a row between its pinned and scrolled parts)."""
    return page.locator(f"[role=row][row-id='{row_id}'] [role=gridcell][col-id='{column}']").first


def _open(context, address: str):
    """A fresh tab on ``address``: the UI leaves a shared view for another address of the same
    experiment only on a full load (a hash change alone stays on its loading skeleton)."""
    for old in context.pages:
        old.close()
    page = context.new_page()
    page.goto(address)
    return page


def _group(page, label: str):
    """The group header of tag value ``label`` (its cell has title=<value>, text 'Group: <value>')."""
    return page.locator(f"span[title='{label}']", has_text=f"Group: {label}").first


def test_summary_run_in_the_ui(tmp_path, capsys):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[dev])")
    port = _free_port()
    server = Server(f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path / "artifacts", port)
    try:
        assert server.ready.wait(timeout=180) and server.proc.poll() is None, "".join(server.lines[-40:])
        base = f"http://127.0.0.1:{port}"
        client = MlflowClient(base)
        launch(client, "smoke-older", SECOND)
        latest = launch(client, "smoke-latest", FIRST)
        exp_id = client.get_run(latest).info.experiment_id
        capsys.readouterr()
        assert main(["smoke", "--tracking-uri", base, "--out", str(tmp_path / "out")]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == str(tmp_path / "out/smoke/report.html")
        address = summary_address(base, exp_id)
        assert f"smoke: open {address}" in err
        (summary,) = summary_runs(client, exp_id)
        means = expected(FIRST)

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            context = browser.new_context(viewport={"width": 1800, "height": 1000})
            # nothing leaves the machine: every request to another host is aborted
            context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname
                          == "127.0.0.1" else route.abort())

            # 1. the printed address: the summary run's one row, every grid row's mean AP, nothing unfolded
            page = _open(context, address)
            page.get_by_text(SUMMARY, exact=True).first.wait_for(timeout=90_000)
            for name in NAMES:
                cell = _cell(page, summary.info.run_id, f"metrics.`AP.mean/{name}`")
                cell.wait_for(timeout=30_000)
                assert cell.inner_text().strip() == f"{means[f'AP.mean/{name}']:g}", name
                assert page.get_by_text(f"AP.mean/{name}", exact=True).first.is_visible()
            assert page.get_by_text("1 matching run").first.is_visible()
            _shot(page, tmp_path, "summary_view")

            # the plain runs page: two launches and the summary, all top-level rows
            page = _open(context, runs_url(base, exp_id))
            for name in (SUMMARY, "smoke-latest", "smoke-older"):
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            # 2. "Group by" -> tag tood.row: one group per grid row (the launches and the summary: "Additional runs")
            page.get_by_role("button", name="Group by").first.click()
            page.get_by_placeholder("Search").last.fill("tood.row")
            page.get_by_text("tood.row", exact=True).last.click()
            page.keyboard.press("Escape")
            for label in ROWS:
                _group(page, label).wait_for(timeout=30_000)
            assert page.locator("span[title]", has_text="Group: ").count() == len(ROWS)
            _shot(page, tmp_path, "group_by_row")

            # the saved by-row view: the latest launch's trials, each group's average = the summary's mean
            page = _open(context, view_url(base, exp_id, ROWS_VIEW))
            for label, name in zip(ROWS, NAMES):
                cell = _cell(page, f"tag.tood.row.{label}", "metrics.`AP`")
                cell.wait_for(timeout=60_000)
                # the cell reads '32.375 (average)'
                assert cell.inner_text().startswith(f"{means[f'AP.mean/{name}']:g}"), cell.inner_text()
            _shot(page, tmp_path, "rows_view")

            # 3. the summary run's artifacts: report.html rendered in the viewer's iframe
            page = _open(context, run_url(base, exp_id, summary.info.run_id))
            page.get_by_role("tab", name="Artifacts").first.click()
            page.get_by_text("report.html", exact=True).first.click()
            report = page.frame_locator("iframe").first
            report.get_by_text(TITLE, exact=True).first.wait_for(timeout=60_000)
            assert report.get_by_text("parallel head + ATSS", exact=True).first.is_visible()
            _shot(page, tmp_path, "report_artifact")
            browser.close()
    finally:
        server.stop()
    assert server.proc.returncode is not None
