"""A researcher's first hour: what goes wrong before the first result arrives says so in one
line, up front. Tracking URIs (relative sqlite paths resolved, malformed ones refused), a Ray
cluster with token authentication, datasets checked before Ray starts and permanent errors
in trials not retried, grids copied out of the project, the smoke profile, ``--help``
defaults, and an ETA checked against a simulated schedule."""
from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from orchestration.datasets import check_dataset, check_datasets, dataset_cache_file
from orchestration.folders import storage_root
from orchestration.grid import expand, expand_grid, load_grid
from orchestration import progress
from orchestration.progress import dispatch_gap, eta_seconds, suite_line
from orchestration.suite import schedule, trial_key, unique_trials
from orchestration.uris import TRACKING_FORMS, normalise_tracking_uri
from tood.config import ConfigError, parse_override

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SMOKE = EXPERIMENTS / "smoke.yaml"
BAD_URIS = ["htp://127.0.0.1:5000", "sqlite:/x.db", "sqlite://x.db", "mlflow-store://host/x"]


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "TOOD_"))}
    return subprocess.run([sys.executable, "-m", "tood_ablate", *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, "RAY_USAGE_STATS_ENABLED": "0",
                               "TOOD_FINGERPRINT_CACHE": str(cwd / "cache/fingerprints.json"), **(env or {})},
                          timeout=timeout)


def _one_line_exit_2(proc: subprocess.CompletedProcess, seconds: float) -> str:
    assert seconds <= 15, f"the error must come within 15 s (took {seconds:.1f})"
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _coco(root: Path) -> Path:
    """A valid two-image, two-category COCO split at ``root`` (ann.json, images/)."""
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (90, 120, 200)).save(root / "images" / name)
    (root / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                   {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 12, 10]},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [8, 6, 10, 14]}]}))
    return root


COCO_SETS = ["data.synthetic=null", "model.backbone.pretrained=null", "model.backbone.pretrain=null", "model.num_classes=2",
             "data.train_ann=ann.json", "data.train_images=images", "data.val_ann=ann.json", "data.val_images=images"]


# ------------------------------------------------------------------ tracking URIs


def test_tracking_uri_forms(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert normalise_tracking_uri("sqlite:///rel/mlruns.db") == f"sqlite:///{tmp_path}/rel/mlruns.db"
    assert capsys.readouterr().err == f"tood-ablate: --tracking-uri: relative sqlite path resolved to sqlite:///{tmp_path}/rel/mlruns.db\n"
    for uri in ("sqlite:////abs/mlruns.db", "http://127.0.0.1:5000", "https://mlflow.example.org", "file:/abs/mlruns",
                "databricks", "databricks://profile", "postgresql://user@host/db"):
        assert normalise_tracking_uri(uri) == uri
    assert normalise_tracking_uri("store") == str(tmp_path / "store")
    assert capsys.readouterr().err == f"tood-ablate: --tracking-uri: relative folder resolved to {tmp_path / 'store'}\n"
    for uri, why in [("htp://127.0.0.1:5000", "unknown scheme 'htp'"), ("sqlite:/x.db", "1 slash(es) after 'sqlite:'"),
                     ("sqlite://x.db", "2 slash(es) after 'sqlite:'"), ("sqlite:///", "no database path"),
                     ("sqlite:///:memory:", "in-memory store"), ("http://", "no host"), ("localhost:5000", "unknown scheme")]:
        with pytest.raises(ConfigError) as e:
            normalise_tracking_uri(uri)
        assert str(e.value) == f"--tracking-uri {uri}: {str(e.value).split(': ', 1)[1]}" and why in str(e.value)
        assert str(e.value).endswith(f"(expected one of: {TRACKING_FORMS})") and "\n" not in str(e.value)


def _status_record(tmp: Path, uri: str) -> list[str]:
    folder = tmp / "ray" / "old"
    folder.mkdir(parents=True)
    (folder / "tood_launch.json").write_text(json.dumps({"name": "old", "path": str(folder), "tracking_uri": uri,
                                                          "options": {}, "studies": []}))
    return ["status", "old", "--storage-path", str(tmp / "ray")]


@pytest.mark.parametrize("uri", BAD_URIS)
@pytest.mark.parametrize("command", ["run", "report", "status"])
def test_malformed_tracking_uri_is_one_line(command, uri, tmp_path):
    if command == "run":
        args = ["run", str(SMOKE), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    elif command == "report":
        args = ["report", "smoke", f"--tracking-uri={uri}", "--out", str(tmp_path / "out")]
    else:
        args = _status_record(tmp_path, uri)
    t0 = time.monotonic()
    proc = _cli(args, tmp_path)
    line = _one_line_exit_2(proc, time.monotonic() - t0)
    flag = "launch 'old': tracking URI" if command == "status" else "--tracking-uri"
    assert line.startswith(f"tood-ablate: error: {flag} {uri}: ") and line.endswith(f"(expected one of: {TRACKING_FORMS})"), line
    assert not list(tmp_path.glob("**/*.db")) and not (tmp_path / "out").exists()
    if command == "run":
        assert not (tmp_path / "ray").exists() and not (tmp_path / "data").exists()  # nothing started


def test_relative_sqlite_uri_is_resolved_in_the_launch_line(tmp_path):
    """The launch says where the store is before anything else; the run then stops at the
    address check (nothing listens there), before any store or run exists."""
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _cli(["run", str(SMOKE), "--tracking-uri", "sqlite:///rel/mlruns.db", "--address", f"127.0.0.1:{port}",
                 "--storage-path", str(tmp_path / "ray"), "--quiet"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0] == f"tood-ablate: --tracking-uri: relative sqlite path resolved to sqlite:///{tmp_path}/rel/mlruns.db"
    assert lines[1].startswith(f"tood-ablate: error: --address 127.0.0.1:{port}: nothing accepts connections")


# ------------------------------------------------------------------ datasets


def test_coco_profile_without_coco_is_one_line_before_anything_starts(tmp_path):
    t0 = time.monotonic()
    proc = _cli(["run", str(EXPERIMENTS / "table6_alignment.yaml"), "--profile", "coco", "--storage-path", str(tmp_path / "ray"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"], tmp_path)
    line = _one_line_exit_2(proc, time.monotonic() - t0)
    missing = tmp_path / "data/coco/annotations/instances_train2017.json"
    assert line == (f"tood-ablate: error: data.train_ann: {missing}: annotation file not found (expected a COCO-format json) "
                    f"(trial head=parallel,assigner=atss,seed=0; data.root {tmp_path / 'data/coco'}: --set data.root=PATH "
                    "points the grid at the dataset)"), line
    # no MLflow run (the store is not even created) and no Ray session (its storage folder)
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ray").exists()


def test_dataset_check_names_the_problem_and_is_cached(tmp_path, monkeypatch):
    import tood.data.coco as coco

    monkeypatch.setenv("TOOD_FINGERPRINT_CACHE", str(tmp_path / "cache/fingerprints.json"))
    root = _coco(tmp_path / "coco")
    assert check_dataset(root / "ann.json", root / "images", train=True) == 2
    assert dataset_cache_file() == tmp_path / "cache/datasets.json" and dataset_cache_file().is_file()
    calls = []
    real = coco.validate_coco
    monkeypatch.setattr(coco, "validate_coco", lambda *a: calls.append(a[1]) or real(*a))
    assert check_dataset(root / "ann.json", root / "images", train=True) == 2 and calls == []  # cached
    assert check_dataset(root / "ann.json", root / "images", train=False) == 2 and len(calls) == 1  # another split
    (root / "images/b.png").rename(root / "b.png")  # the image folder changes, the annotation file does not
    with pytest.raises(coco.DatasetError, match=r"images\[1\] \(id 2\): image file .*b\.png not found"):
        check_dataset(root / "ann.json", root / "images", train=True)
    (root / "b.png").rename(root / "images/b.png")  # back as it was: known again
    assert check_dataset(root / "ann.json", root / "images", train=True) == 2 and len(calls) == 2
    ann = json.loads((root / "ann.json").read_text())
    ann["categories"].append({"id": 3, "name": "ring"})
    (root / "ann.json").write_text(json.dumps(ann))  # another content: validated again
    assert check_dataset(root / "ann.json", root / "images", train=True) == 3 and len(calls) == 3
    # a trial whose model disagrees with the file, and a broken file: one line each, naming the file
    specs = expand(load_grid(SMOKE), "proxy", [0], {**dict(parse_override(s) for s in COCO_SETS), "data.root": str(root)})
    with pytest.raises(ConfigError, match=rf"^{root / 'ann.json'}: has 3 categories but model.num_classes is 2 "
                                          r"\(expected equal; set --set model.num_classes=3\)$"):
        check_datasets(specs)
    ann["annotations"][0]["category_id"] = 9
    ann["images"][1]["file_name"] = "gone.png"
    (root / "ann.json").write_text(json.dumps(ann))
    with pytest.raises(ConfigError) as e:
        check_datasets(specs)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"data.train_ann: 2 problem(s) in {root / 'ann.json'}: ")
    assert "images[1] (id 2): image file" in str(e.value) and "unknown category_id 9" in str(e.value)


def test_permanent_dataset_error_fails_the_trial_after_one_attempt(tmp_path, monkeypatch, capsys):
    """A real launch whose annotation file disappears after the driver's check (the hook that
    runs between the check and the trials deletes it): each trial fails at once, FAILED after
    one attempt with the dataset's message, although --max-failures allows 2 retries. The
    store is given as a relative sqlite path and the trials, which run in their own folders,
    write to the store the launch line names."""
    from mlflow.tracking import MlflowClient

    import orchestration.launch as launch
    from tood_ablate.cli import main

    root = _coco(tmp_path / "coco")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TOOD_FINGERPRINT_CACHE", str(tmp_path / "cache/fingerprints.json"))
    monkeypatch.setattr(launch, "_prepare_data", lambda specs: (root / "ann.json").unlink())
    sets = [a for s in [f"data.root={root}", *COCO_SETS, "train.epochs=1"] for a in ("--set", s)]
    code = main(["run", str(SMOKE), "--name", "gone", "--tracking-uri", "sqlite:///rel/mlruns.db", "--max-failures", "2",
                 "--storage-path", str(tmp_path / "ray"), "--quiet", *sets])
    err = capsys.readouterr().err
    assert code == 1 and f"relative sqlite path resolved to sqlite:///{tmp_path}/rel/mlruns.db" in err
    client = MlflowClient(f"sqlite:///{tmp_path}/rel/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("tood-ablate/smoke").experiment_id], "tags.`tood.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED" and run.data.tags["tood.attempts"] == "1"
        assert run.data.tags["tood.error"] == f"DatasetError: {root / 'ann.json'}: annotation file not found (expected a COCO-format json)"
    assert not list((tmp_path / "ray").glob("**/mlruns.db"))  # no trial wrote a store of its own
    assert (tmp_path / "rel/mlartifacts/tood-ablate/smoke").is_dir()  # artifacts beside the store


def test_permanent_cause_finds_the_innermost_config_or_dataset_error():
    from ray.exceptions import RayTaskError

    from orchestration.trainable import permanent_cause
    from tood.data.coco import DatasetError
    from tood.engine import NonFiniteLossError

    try:
        raise DatasetError("/d/ann.json: annotation file not found")
    except DatasetError as e:
        inner = e
    wrapped = RayTaskError("run_trial", "\x1b[36mtraceback\x1b[39m", inner).as_instanceof_cause()  # what the driver sees
    assert isinstance(wrapped, DatasetError) and permanent_cause(wrapped) is inner
    try:
        try:
            raise ConfigError("model.num_classes: 3 != 2")
        except ConfigError as e:
            raise RuntimeError("Training failed") from e  # e.g. a Ray Train worker group error
    except RuntimeError as e:
        assert str(permanent_cause(e)) == "model.num_classes: 3 != 2"
    assert isinstance(permanent_cause(NonFiniteLossError("loss is nan")), NonFiniteLossError)
    assert permanent_cause(RuntimeError("node lost")) is None and permanent_cause(OSError("disk full")) is None


# ------------------------------------------------------------------ grids and profiles


def test_grid_copied_elsewhere_finds_its_base(tmp_path):
    copy = tmp_path / "mine" / "smoke.yaml"
    copy.parent.mkdir()
    shutil.copy(SMOKE, copy)  # `base: base.yaml`, with no base.yaml beside it
    grid = load_grid(copy)
    assert grid.base == EXPERIMENTS / "base.yaml"
    assert [trial_key(t.config) for t in expand(grid)] == [trial_key(t.config) for t in expand_grid(SMOKE)]
    (copy.parent / "base.yaml").write_text(f"base: {EXPERIMENTS / 'base.yaml'}\ntest: {{nms_iou: 0.5}}\n")  # beside it: preferred
    assert load_grid(copy).base == copy.parent / "base.yaml" and expand(load_grid(copy))[0].config["test"]["nms_iou"] == 0.5
    copy.write_text(copy.read_text().replace("base: base.yaml", "base: nowhere.yaml"))
    with pytest.raises(ConfigError) as e:
        load_grid(copy)
    assert str(e.value).startswith(f"{copy}: base: 'nowhere.yaml' not found (tried {copy.parent / 'nowhere.yaml'}, "
                                   f"{EXPERIMENTS / 'nowhere.yaml'};")


def test_smoke_profile_shrinks_a_paper_grid():
    trials = expand_grid(EXPERIMENTS / "table1_head.yaml", profile="smoke")
    assert len(trials) == 24
    for t in trials:
        train, data = t.config["train"], t.config["data"]
        assert (train["epochs"], train["batch_size"], train["max_iters_per_epoch"], train["eval_every"]) == (2, 8, 6, 1)
        assert data["img_scale"] == [128, 128] and data["root"] == str(Path("data/smoke").resolve())
        assert {k: data["synthetic"][k] for k in ("n_train", "n_val", "image_size", "noise")} == \
            {"n_train": 48, "n_val": 16, "image_size": 128, "noise": None}
        assert t.config["model"]["backbone"]["pretrain"]["n_images"] == 40 and t.config["criterion"]["warmup_epochs"] == 1
    # the smoke grid's own sizes: the same trials (and so the same data folder and keys) either way
    assert [trial_key(t.config) for t in expand_grid(SMOKE, profile="smoke")] == \
        [trial_key(t.config) for t in expand_grid(SMOKE, profile="proxy")]


def test_help_shows_defaults_and_the_storage_default_is_the_codes(monkeypatch, tmp_path, capsys):
    from tood_ablate.cli import main

    monkeypatch.chdir(tmp_path)
    assert storage_root(None) == tmp_path / "runs/ray"
    for command, expected in (("run", ["(default: proxy)", "(default: 2)", "(default: <cwd>/runs/ray)", "(default: 1.0)"]),
                              ("resume", ["(default: <cwd>/runs/ray)", "(default: the launch's)"]),
                              ("status", ["(default: <cwd>/runs/ray)"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert all(e in out for e in expected) and "(default: None)" not in out, out
    text = (EXPERIMENTS / "base.yaml").read_text()
    assert "data.backbone.pretrained" not in text and "a COCO 2017 folder and model.backbone.pretrained" in text


# ------------------------------------------------------------------ ETA


def _trials_at(t: float, costs: list[float], start: list[float], end: list[float], epochs: int):
    """Tune's view at time ``t`` of a schedule: trial stand-ins and their start / end times."""
    trials, started, ended = [], {}, {}
    for i, (cost, s, e) in enumerate(zip(costs, start, end)):
        tid = f"t{i}"
        spec = {"trial": {"key": tid, "run_id": tid, "name": tid, "cost": cost, "config": {"train": {"epochs": epochs}}}}
        if e <= t:
            status, result = "TERMINATED", {"done": True, "epoch": epochs, "time_total_s": e - s}
            started[tid], ended[tid] = s, e
        elif s <= t:
            status, result = "RUNNING", {"epoch": int((t - s) / (e - s) * epochs)}
            started[tid] = s
        else:
            status, result = "PENDING", {}
        trials.append(SimpleNamespace(trial_id=tid, status=status, last_result=result, config=spec))
    return trials, started, ended


def _list_schedule(durations: list[float], slots: int, gaps: list[float] | None = None) -> tuple[list[float], list[float]]:
    """Start and end of each trial when each starts, in order, on the first slot to free (Tune's
    way), ``gaps[k]`` seconds after that slot freed (the first ``slots`` trials start at 0)."""
    free, start, end = [0.0] * slots, [], []
    for k, d in enumerate(durations):
        i = free.index(min(free))
        if gaps and k >= slots:
            free[i] += gaps[k]
        start.append(free[i])
        free[i] += d
        end.append(free[i])
    return start, end


def test_eta_by_hand():
    # 7 equal trials of 100 s on 3 slots: rounds end at 100, 200 and 300 s
    costs, (start, end) = [1.0] * 7, _list_schedule([100.0] * 7, 3)

    def eta(t: float) -> float | None:
        trials, started, ended = _trials_at(t, costs, start, end, 4)
        return eta_seconds(trials, 3, started, ended, now=t)

    assert eta(50) is None  # nothing finished yet
    assert eta(100) == pytest.approx(200)  # 4 waiting: 3 for 100 s, then 1 for 100 s
    assert eta(200) == pytest.approx(100)  # the last trial starts alone (cost left / slots would say 33)
    assert eta(250) == pytest.approx(50)  # 50 s into it, from its start time
    trials, started, ended = _trials_at(250, costs, start, end, 4)
    assert suite_line(trials, 3, started, ended, now=250) == "suite: 6/7 trials done, 1 running, ETA 50 s"  # under 2 min: seconds
    assert eta_seconds(trials, 3, started, {}, now=250) == pytest.approx(50)  # without end times: Tune's time_total_s
    assert eta_seconds(trials, 3, started, ended, now=320) == 0.0  # overdue: about to end
    # without a start time, a running trial counts by its share of epochs (2 of 4 done): 50 s
    assert eta_seconds(trials, 3, {k: v for k, v in started.items() if k != "t6"}, ended, now=250) == pytest.approx(50)


@pytest.mark.parametrize("slots", [3, 5, 7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eta_within_30_percent_on_a_simulated_schedule(slots, seed):
    """Table 1 on the proxy (24 trials, Tune's order, estimated costs): a trial takes 20 s to
    start plus its cost at 280 s for the costliest, each +-10% (seeded). From the third
    finished trial on, at every trial's end with at least a minute left (the ETA is shown in
    minutes), the ETA is within 30% of the time actually left; spreading the cost left over
    the slots (the previous estimate) is not, at the tail."""
    specs = [expand_grid(EXPERIMENTS / "table1_head.yaml", profile="proxy")]
    costs = [t.cost for t in schedule(unique_trials(specs), specs)]
    rng = random.Random(seed)
    durations = [20 + 280 * c / max(costs) * rng.uniform(0.9, 1.1) for c in costs]
    start, end = _list_schedule(durations, slots)
    errors, spread_errors = [], []
    for t in sorted(end)[2:]:
        left = max(end) - t
        if left < 60:
            continue
        trials, started, ended = _trials_at(t, costs, start, end, 16)
        errors.append(eta_seconds(trials, slots, started, ended, now=t) / left - 1)
        done = [(e - s, c) for c, s, e in zip(costs, start, end) if e <= t]
        rate = sum(d for d, _ in done) / sum(c for _, c in done)
        cost_left = sum(c * (1 - tr.last_result.get("epoch", 0) / 16) for c, tr in zip(costs, trials) if tr.status != "TERMINATED")
        spread_errors.append(rate * cost_left / slots / left - 1)
    assert len(errors) >= 8 and max(map(abs, errors)) <= 0.3, [f"{e:+.0%}" for e in errors]
    if slots in (5, 7):  # the tail: fewer trials left than slots
        assert max(map(abs, spread_errors)) > 0.3


def test_dispatch_gap_by_hand():
    # 2 slots; trials a, b start at 0; a ends at 10, c starts at 13; b ends at 12, d starts at 17
    started, ended = {"a": 0.0, "b": 0.0, "c": 13.0, "d": 17.0}, {"a": 10.0, "b": 12.0}
    assert dispatch_gap(started, ended, 2) == pytest.approx((3 + 5) / 2)
    assert dispatch_gap({"a": 0.0, "b": 0.0}, {"a": 10.0}, 2) == 0.0  # nothing started on a freed slot yet


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eta_within_30_percent_on_a_smoke_launch_with_dispatch_gaps(seed, monkeypatch):
    """The smoke profile's Table 4 (18 equal trials on 2 slots): a trial runs ~7 s (+-15%) and a
    freed slot waits ~4 s (+-25%) for the next one to start -- the shape measured on a real smoke
    launch. From the third finished trial on, at every trial's end with at least 10 s left, the
    ETA is within 30% of the time left; leaving the gap out (the previous model) is not."""
    rng = random.Random(seed)
    durations = [7 * rng.uniform(0.85, 1.15) for _ in range(18)]
    gaps = [4 * rng.uniform(0.75, 1.25) for _ in range(18)]
    start, end = _list_schedule(durations, 2, gaps)
    errors, gapless = [], []
    for t in sorted(end)[2:]:
        left = max(end) - t
        if left < 10:
            continue
        trials, started, ended = _trials_at(t, [1.0] * 18, start, end, 2)
        errors.append(eta_seconds(trials, 2, started, ended, now=t) / left - 1)
        with monkeypatch.context() as m:
            m.setattr(progress, "dispatch_gap", lambda *a: 0.0)
            gapless.append(eta_seconds(trials, 2, started, ended, now=t) / left - 1)
    assert len(errors) >= 10 and max(map(abs, errors)) <= 0.3, [f"{e:+.0%}" for e in errors]
    assert max(map(abs, gapless)) > 0.3


# ------------------------------------------------------------------ a cluster with token authentication


@pytest.mark.slow
def test_cluster_with_default_token_auth_is_joined_or_refused_in_one_line(tmp_path):
    """`ray start --head` enables token auth when a token exists (~/.ray/auth_token of its
    HOME). A driver on the same machine (same HOME) joins with --address and no extra
    environment; one without the token stops in one line naming what to set."""
    from tests.test_cluster import Service, _free_port, _port_open

    home, stranger = tmp_path / "home", tmp_path / "stranger"
    (home / ".ray").mkdir(parents=True)
    stranger.mkdir()
    (home / ".ray/auth_token").write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "TOOD_"))}
    env.update(HOME=str(home), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    ray_tmp = Path(tempfile.mkdtemp(prefix="tood-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs = _free_port()
    ports = {flag: _free_port() for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                             "metrics-export-port", "node-manager-port", "object-manager-port")}
    head = Service([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}",
                    "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={ray_tmp}",
                    "--object-store-memory=100000000", "--disable-usage-stats", *(f"--{f}={p}" for f, p in ports.items())],
                   tmp_path / "ray-head.log", env)
    try:
        head.wait_until(lambda: _port_open(gcs) and "Ray runtime started" in head.log.read_text(), "ray head")
        assert "Token authentication is enabled" in head.log.read_text()
        t0 = time.monotonic()
        refused = _cli(["run", str(SMOKE), "--address", f"127.0.0.1:{gcs}", "--storage-path", str(tmp_path / "ray2"),
                        "--tracking-uri", f"sqlite:///{tmp_path / 'refused.db'}"], tmp_path, {**env, "HOME": str(stranger)})
        line = _one_line_exit_2(refused, time.monotonic() - t0)
        assert line.startswith(f"tood-ablate: error: --address 127.0.0.1:{gcs}: the Ray cluster at 127.0.0.1:{gcs} requires "
                               "token authentication and this machine has no token (expected RAY_AUTH_TOKEN="), line
        assert not (tmp_path / "refused.db").exists() and not (tmp_path / "ray2").exists()
        wrong = _cli(["run", str(SMOKE), "--address", f"127.0.0.1:{gcs}", "--storage-path", str(tmp_path / "ray2")],
                     tmp_path, {**env, "HOME": str(stranger), "RAY_AUTH_TOKEN": "0" * 64})
        assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
            f"tood-ablate: error: --address 127.0.0.1:{gcs}: the Ray cluster at 127.0.0.1:{gcs} rejects the token from "
            "$RAY_AUTH_TOKEN (expected the token the head was started with: `ray get-auth-token` on the head prints it)"]
        joined = _cli(["run", str(SMOKE), "--name", "joined", "--address", f"127.0.0.1:{gcs}", "--storage-path",
                       str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--quiet"],
                      tmp_path, env, timeout=900)
        assert joined.returncode == 0 and "Traceback" not in joined.stderr, joined.stderr[-4000:]
        assert list(ray_tmp.glob("session_*/logs/worker-*"))  # the trials ran in the cluster's workers
    finally:
        head.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
