"""The MLflow UI on a study: a real ``mlflow server`` on 127.0.0.1 over a store with a small
grid's runs (created as orchestration.tracking lays them out), rendered by headless Chromium
(playwright driving the Debian ``chromium``). The experiment's runs address (orchestration.mlflow_ui)
must open on the runs table (the model-training view, not the GenAI overview) with the
parent run and, unfolded, its child runs; the saved paper view must show the AP column with
the trials' values."""

import os

os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlparse  # noqa: E402

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from orchestration.tracking import ensure_experiment  # noqa: E402
from orchestration.mlflow_ui import KIND_TAG, PAPER_VIEW, TRAINING_KIND, VIEW_TAG_PREFIX, runs_url, view_url  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# (row label, factors, per-seed AP); AP values are exact in binary so the UI prints them as logged.
GRID = [("parallel head + ATSS", {"head": "parallel", "assigner": "atss"}, [31.25, 33.5]),
        ("T-head + TAL", {"head": "t_head", "assigner": "tal"}, [35.75, 36.125])]
LAUNCH = "smoke-ui-20261202"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_store(root: Path, tracking_uri: str) -> tuple[str, list[str]]:
    """Experiment tood-ablate/smoke (via ensure_experiment), a parent run and 4 FINISHED child runs."""
    client = MlflowClient(tracking_uri=tracking_uri)
    cwd = os.getcwd()
    os.chdir(root)  # ensure_experiment puts a local store's artifacts under <cwd>/mlartifacts
    try:
        exp_id = ensure_experiment(client, "smoke")
    finally:
        os.chdir(cwd)
    parent = client.create_run(exp_id, run_name=LAUNCH, tags={
        "tood.role": "parent", "tood.study": "smoke", "tood.table": "smoke", "tood.seeds": "0,1",
        "tood.num_trials": "4"}).info.run_id
    names = []
    for index, (label, factors, aps) in enumerate(GRID):
        for seed, ap in enumerate(aps):
            name = ",".join(f"{k}={v}" for k, v in factors.items()) + f",seed={seed}"
            rid = client.create_run(exp_id, run_name=name, tags={
                "mlflow.parentRunId": parent, "tood.role": "trial", "tood.study": "smoke", "tood.table": "smoke",
                "tood.row": label, "tood.row_index": str(index), "tood.seed": str(seed), "tood.attempts": "1",
                **{f"tood.factor.{k}": v for k, v in factors.items()}}).info.run_id
            for key, value in {"AP": ap, "AP50": ap + 20, "AP75": ap - 10, "PCC": 0.25}.items():
                client.log_metric(rid, key, value, step=2)
            client.set_terminated(rid, "FINISHED")
            names.append(name)
    client.set_terminated(parent, "FINISHED")
    return exp_id, names


class Server:
    """``mlflow server`` in its own process group; ``ready`` is set when uvicorn/gunicorn says it listens."""

    def __init__(self, store: str, artifacts: Path, port: int) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", store, "--default-artifact-root", artifacts.as_uri()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stdout:  # also keeps the pipe from filling up
            self.lines.append(line)
            if "Uvicorn running on" in line or "Listening at" in line:
                self.ready.set()
        self.ready.set()  # the server exited: stop waiting

    def stop(self) -> None:
        """SIGTERM to the server's process group (its pid: start_new_session), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def _expand(page) -> None:
    """Unfold the parent run: the [+] button in its Run Name cell."""
    row = page.locator("[role=row]", has=page.get_by_text(LAUNCH, exact=True))
    row.locator("[role=gridcell][col-id='attributes.`Run Name`'] button").first.click()


def test_mlflow_ui_opens_on_the_runs(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e .[dev])")
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    exp_id, children = build_store(tmp_path, store)
    tags = MlflowClient(tracking_uri=store).get_experiment(exp_id).tags
    assert tags[KIND_TAG] == TRAINING_KIND
    view = json.loads(tags[VIEW_TAG_PREFIX + PAPER_VIEW])
    assert "metrics.`AP`" in json.loads(view["state"])["selectedColumns"]

    port = _free_port()
    server = Server(store, tmp_path / "served-artifacts", port)
    try:
        assert server.ready.wait(timeout=180) and server.proc.poll() is None, "".join(server.lines[-40:])
        base = f"http://127.0.0.1:{port}"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            context = browser.new_context(viewport={"width": 1800, "height": 1000})
            # nothing leaves the machine: every request to another host is aborted
            context.route("**/*", lambda route: route.continue_() if urlparse(route.request.url).hostname
                          == "127.0.0.1" else route.abort())
            page = context.new_page()
            page.goto(runs_url(base, exp_id))
            parent = page.get_by_text(LAUNCH, exact=True).first
            parent.wait_for(timeout=90_000)
            assert "/overview" not in page.url and "/traces" not in page.url, page.url
            assert page.get_by_role("columnheader", name="Run Name").first.is_visible()
            _expand(page)
            for name in children:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "runs.png"))

            page.goto(view_url(base, exp_id))
            page.get_by_text(LAUNCH, exact=True).first.wait_for(timeout=60_000)
            _expand(page)
            page.get_by_text("31.25", exact=True).first.wait_for(timeout=60_000)
            for value in ("33.5", "35.75", "36.125"):
                assert page.get_by_text(value, exact=True).first.is_visible(), value
            assert page.get_by_text("AP50", exact=True).first.is_visible()
            assert page.get_by_text(LAUNCH, exact=True).first.is_visible()
            page.screenshot(path=str(tmp_path / "paper_view.png"))
            browser.close()
        if os.environ.get("TOOD_UI_SCREENSHOTS"):  # a folder to keep the screenshots in
            for shot in ("runs.png", "paper_view.png"):
                shutil.copy(tmp_path / shot, Path(os.environ["TOOD_UI_SCREENSHOTS"]) / shot)
    finally:
        server.stop()
    assert server.proc.returncode is not None
