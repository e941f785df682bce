"""Bad input through the real CLIs: every case runs ``tood`` or ``tood-ablate`` in a subprocess
and must exit non-zero before any training starts, with one message naming the file or flag,
the field and what was expected, without a traceback, and without leaving a result that
looks complete (``metrics.json``, ``last.pt``, a launch record, a tracking store)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BASE = ROOT / "experiments/base.yaml"
SMOKE = ROOT / "experiments/smoke.yaml"
TINY = ["data.synthetic=null", "model.backbone.pretrained=null", "model.backbone.pretrain=null", "data.img_scale=[64, 64]",
        "model.neck_channels=16", "model.head.feat_channels=16", "model.head.gn_groups=4", "model.backbone.base_width=8",
        "train.epochs=1", "train.batch_size=2", "train.workers=0", "model.num_classes=2", "data.train_ann=ann.json",
        "data.train_images=images", "data.val_ann=ann.json", "data.val_images=images"]


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of stderr: the file or flag, the field, what was expected
    absent: list[Path] = field(default_factory=list)  # results that must not exist afterwards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _coco() -> dict:
    """Two 32x32 images, two categories, one box each (COCO xywh)."""
    return {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 12, 10]},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [8, 6, 10, 14]}]}


def _train(tmp: Path, mutate: Callable[[dict], object] | None = None, text: str | None = None, *sets: str) -> Case:
    """``tood train`` on a tiny COCO folder whose ann.json is ``_coco()`` after ``mutate`` (or ``text``)."""
    root = tmp / "coco"
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), (90, 120, 200)).save(root / "images" / name)
    data = _coco()
    if mutate is not None:
        mutate(data)  # in place
    (root / "ann.json").write_text(text if text is not None else json.dumps(data))
    work = tmp / "work"
    argv = [str(BIN / "tood"), "train", str(BASE), "--profile", "proxy", "--work-dir", str(work), "--quiet",
            *(a for s in [f"data.root={root}", *TINY, *sets] for a in ("--set", s))]
    return Case(argv, [], [work / "metrics.json", work / "last.pt"])


def coco(mutate=None, text=None, *expect: str) -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        case = _train(tmp, mutate, text)
        case.expect = [str(tmp / "coco/ann.json"), *expect]
        return case
    return make


def _set(d: dict, section: str, i: int, **kv) -> None:
    d[section][i].update(kv)


def _not_an_image(tmp: Path) -> Case:
    case = _train(tmp)
    (tmp / "coco/images/b.png").write_text("this is not a png")
    case.expect = [str(tmp / "coco/ann.json"), "images[1] (id 2)", "b.png is not a readable image", "expected a JPEG/PNG"]
    return case


def _wrong_size(tmp: Path) -> Case:
    case = _train(tmp)
    Image.new("RGB", (40, 32)).save(tmp / "coco/images/a.png")
    case.expect = ["images[0] (id 1)", "a.png is 40x32 px but width x height is 32x32 (expected equal)"]
    return case


def _class_count(tmp: Path) -> Case:
    case = _train(tmp, None, None, "model.num_classes=3")
    case.expect = [str(tmp / "coco/ann.json"), "has 2 categories but model.num_classes is 3", "expected equal"]
    return case


def train_cli(*sets: str, expect: list[str]) -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        case = _train(tmp, None, None, *sets)
        case.expect = expect
        return case
    return make


def config_file(text: str, *expect: str) -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        (tmp / "cfg.yaml").write_text(text)
        work = tmp / "work"
        return Case([str(BIN / "tood"), "train", str(tmp / "cfg.yaml"), "--work-dir", str(work), "--quiet"],
                    [str(tmp / "cfg.yaml"), *expect], [work / "metrics.json", work / "last.pt", work / "config.yaml"])
    return make


def _ablate(tmp: Path, *args: str) -> Case:
    argv = [str(BIN / "tood-ablate"), "run", *args]
    if "--storage-path" not in args:
        argv += ["--storage-path", str(tmp / "ray")]
    if "--tracking-uri" not in args:
        argv += ["--tracking-uri", f"sqlite:///{tmp / 'mlruns.db'}"]
    return Case(argv + ["--quiet"], [], [tmp / "ray", tmp / "mlruns.db"])


def grid(rows: str, *expect: str, seeds: str = "[0]") -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        path = tmp / "grid.yaml"
        path.write_text(f"study: bad\ntable: smoke\nbase: {BASE}\nseeds: {seeds}\nrows:\n{rows}")
        case = _ablate(tmp, str(path))
        case.expect = [str(path), *expect]
        return case
    return make


def ablate(*args: str, expect: list[str]) -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        port = str(_free_port())  # nothing listens there
        real = [a.replace("{port}", port).replace("{tmp}", str(tmp)) for a in args]
        case = _ablate(tmp, str(SMOKE), *real)
        case.expect = [e.replace("{port}", port).replace("{tmp}", str(tmp)) for e in expect]
        return case
    return make


def launch_record(command: str) -> Callable[[Path], Case]:
    """A launch record whose MLflow server is gone: ``resume`` / ``status`` must say so up front."""
    def make(tmp: Path) -> Case:
        uri = f"http://127.0.0.1:{_free_port()}"
        folder = tmp / "ray" / "old"
        folder.mkdir(parents=True)
        (folder / "tood_launch.json").write_text(json.dumps({"name": "old", "path": str(folder), "tracking_uri": uri,
                                                              "options": {}, "studies": []}))
        return Case([str(BIN / "tood-ablate"), command, "old", "--storage-path", str(tmp / "ray")],
                    [f"launch 'old': tracking URI {uri}", f"no MLflow server answers at {uri}/health"])
    return make


def _checkpoint(tmp: Path, state: object | None, text: bytes | None = None) -> Path:
    path = tmp / "model.pt"
    if text is not None:
        path.write_bytes(text)
    elif state is not None:
        torch.save(state, path)
    return path


def _model_state(*sets: str) -> dict:
    from tood.build import build_model
    from tood.config import load_config, to_dict

    cfg = load_config(BASE, profile="proxy", overrides=[*TINY, *sets])
    return {"model": build_model(cfg.model, load_pretrained=False).state_dict(), "config": to_dict(cfg)}


def checkpoint(make_state: Callable[[Path], object], *expect: str, truncate: bool = False) -> Callable[[Path], Case]:
    def make(tmp: Path) -> Case:
        state = make_state(tmp)
        if truncate:
            torch.save(state, tmp / "full.pt")
            path = _checkpoint(tmp, None, (tmp / "full.pt").read_bytes()[:5000])
        else:
            path = _checkpoint(tmp, state)
        out = tmp / "metrics.json"
        argv = [str(BIN / "tood"), "eval", str(BASE), str(tmp / "missing.pt" if state is None else path), "--profile",
                "proxy", "--out", str(out), "--quiet", *(a for s in [f"data.root={tmp}", *TINY] for a in ("--set", s))]
        return Case(argv, [str(tmp / "missing.pt" if state is None else path), *expect], [out])
    return make


ROW = "  - label: a\n    factors: {head: t_head}\n"
CASES: dict[str, Callable[[Path], Case]] = {
    # COCO json
    "coco-malformed-json": coco(None, '{"images": [', "malformed JSON at line 1 column 13"),
    "coco-top-level-list": coco(None, "[]", "top level is a list (expected an object with keys images, annotations, categories)"),
    "coco-missing-annotations": coco(lambda d: d.pop("annotations"), None, "missing top-level key 'annotations' (expected a list)"),
    "coco-image-missing-width": coco(lambda d: d["images"][0].pop("width"), None, "images[0] (id 1): missing 'width' (expected a positive integer)"),
    "coco-bbox-wrong-length": coco(lambda d: _set(d, "annotations", 0, bbox=[1, 2, 3]), None, "annotations[0] (id 1): 'bbox' is [1, 2, 3] (expected [x, y, w, h] of 4 finite numbers)"),
    "coco-unknown-category": coco(lambda d: _set(d, "annotations", 1, category_id=99), None, "annotations[1] (id 2): unknown category_id 99 (expected one of [1, 2])"),
    "coco-unknown-image-id": coco(lambda d: _set(d, "annotations", 0, image_id=7), None, "annotations[0] (id 1): unknown image_id 7 (expected the id of an entry in images)"),
    "coco-image-without-file": coco(lambda d: _set(d, "images", 1, file_name="gone.png"), None, "images[1] (id 2): image file", "gone.png not found (expected it under"),
    "coco-duplicate-image-id": coco(lambda d: _set(d, "images", 1, id=1), None, "images[1] (id 1): duplicate image id 1 (expected unique ids)"),
    "coco-empty-annotations": coco(lambda d: d.update(annotations=[]), None, "annotations: no image has a usable box (0 annotations)", "expected at least one"),
    "coco-degenerate-boxes": coco(lambda d: [a.update(bbox=[4, 4, 0.5, 10]) for a in d["annotations"]], None, "all 2 were dropped", "is degenerate (expected w > 1 px"),
    "coco-boxes-outside-image": coco(lambda d: [a.update(bbox=[30, 30, 20, 20]) for a in d["annotations"]], None, "all 2 were dropped", "extends outside the 32x32 image"),
    "coco-file-not-an-image": _not_an_image,
    "coco-image-size-differs": _wrong_size,
    "coco-class-count-differs": _class_count,
    # config YAML and --set
    "config-syntax-error": config_file("train: [1, 2\n", "invalid YAML"),
    "config-unknown-key": config_file("train:\n  epochz: 3\n", "train.epochz: unknown key; did you mean 'epochs'?"),
    "config-wrong-type": config_file("train:\n  lr: fast\n", "train.lr: got 'fast' (expected a number)"),
    "config-out-of-range": config_file("test:\n  score_thr: 1.5\n", "test.score_thr: got 1.5 (expected a number in [0, 1])"),
    "set-out-of-range-alpha": train_cli("criterion.alpha=-1", expect=["criterion.alpha: got -1.0 (expected a number >= 0)"]),
    "set-zero-topk": train_cli("criterion.topk=0", expect=["criterion.topk: got 0 (expected an integer >= 1)"]),
    "set-without-value": train_cli("train.lr", expect=["--set train.lr: expected key=value"]),
    # grid YAML
    "grid-syntax-error": grid("  - label: [a\n", "invalid YAML"),
    "grid-unknown-row-key": grid(ROW + "    sett: {}\n", "rows[0].sett: unknown key (expected one of: label, factors, set, paper)"),
    "grid-unknown-factor-value": grid("  - label: a\n    factors: {assigner: atts}\n", "rows[0].factors.assigner: unknown value 'atts' (expected one of: tal, atss"),
    "grid-wrong-factor-type": grid("  - label: a\n    factors: {alpha: high}\n", "rows[0].factors.alpha: unknown value 'high' (expected a number)"),
    "grid-duplicate-labels": grid(ROW + ROW, "rows[1].label: duplicate label 'a' (expected each row's label to be unique)"),
    "grid-empty-rows": grid("  []\n", "rows: empty grid: got [] (expected a non-empty list of rows)"),
    "grid-bad-seeds": grid(ROW, "seeds: got [0, -1] (expected a non-empty list of distinct non-negative integers)", seeds="[0, -1]"),
    "grid-out-of-range-factor": grid("  - label: a\n    factors: {topk: 0}\n", "rows[0].factors: criterion.topk: got 0 (expected an integer >= 1)"),
    "grid-out-of-range-set": grid(ROW + "    set: {criterion.warmup_epochs: -1}\n", "rows[0].set: criterion.warmup_epochs: got -1 (expected an integer >= 0)"),
    # checkpoints
    "checkpoint-missing": checkpoint(lambda tmp: None, "checkpoint not found"),
    "checkpoint-truncated": checkpoint(lambda tmp: _model_state(), "not a readable tood checkpoint", truncate=True),
    "checkpoint-not-tood": checkpoint(lambda tmp: {"conv1.weight": torch.zeros(1)}, "model: missing (expected a tood checkpoint"),
    "checkpoint-other-head": checkpoint(lambda tmp: _model_state("model.head.type=parallel"), "model.head.type: the checkpoint was trained with 'parallel', the config has 't_head'"),
    "checkpoint-other-classes": checkpoint(lambda tmp: _model_state("model.num_classes=4"), "model.num_classes: the checkpoint was trained with 4, the config has 2"),
    "checkpoint-foreign-weights": checkpoint(lambda tmp: {"model": _model_state("model.head.feat_channels=32")["model"]}, "model: weights do not fit the configured model", "expected a checkpoint of this head"),
    # CLI flags and addresses
    "flag-tracking-uri-unreachable": ablate("--tracking-uri", "http://127.0.0.1:{port}", expect=["--tracking-uri http://127.0.0.1:{port}", "no MLflow server answers at http://127.0.0.1:{port}/health", "expected a running `mlflow server`"]),
    "flag-address-unreachable": ablate("--address", "127.0.0.1:{port}", expect=["--address 127.0.0.1:{port}", "nothing accepts connections at 127.0.0.1:{port}", "expected the GCS port"]),
    "flag-address-malformed": ablate("--address", "localhost", expect=["--address localhost: malformed address (expected auto, host:port or ray://host:port)"]),
    "flag-storage-unwritable": ablate("--storage-path", "{tmp}/file/sub", expect=["--storage-path {tmp}/file/sub: not writable", "is not a folder (expected a folder this user can write)"]),
    "flag-seeds": ablate("--seeds", "0,x", expect=["--seeds: got '0,x' (expected comma-separated integers"]),
    "flag-set-out-of-range": ablate("--set", "criterion.alpha=-1", expect=["--set: criterion.alpha: got -1.0 (expected a number >= 0)"]),
    "flag-detect-score-thr": lambda tmp: Case([str(BIN / "tood"), "detect", str(BASE), str(tmp / "x.pt"), str(tmp / "x.png"), "--profile", "proxy", "--score-thr", "2"],
                                              ["--score-thr: test.score_thr: got 2.0 (expected a number in [0, 1])"]),
    "resume-tracking-unreachable": launch_record("resume"),
    "status-tracking-unreachable": launch_record("status"),
    "diagnose-no-checkpoints": lambda tmp: Case([str(BIN / "tood-ablate"), "diagnose", str(SMOKE), "--storage", str(tmp), "--out", str(tmp / "diag")],
                                                [f"--storage {tmp}: no checkpoint of any of the", "smoke.yaml", "expected the storage folder of a launch"],
                                                [tmp / "diag.json", tmp / "diag.md"]),
    "diagnose-bad-seeds": lambda tmp: Case([str(BIN / "tood-ablate"), "diagnose", str(SMOKE), "--storage", str(tmp), "--seeds", "a", "--out", str(tmp / "diag")],
                                           ["--seeds: got 'a' (expected comma-separated integers"], [tmp / "diag.json"]),
    "flag-report-out-unwritable": lambda tmp: Case([str(BIN / "tood-ablate"), "report", "smoke", "--out", str(tmp / "file/out"), "--tracking-uri", f"sqlite:///{tmp / 'mlruns.db'}"],
                                                   [f"--out {tmp / 'file/out'}: not writable", "is not a folder"], [tmp / "mlruns.db"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_up_front_with_a_clear_message(name, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    case = CASES[name](tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "TOOD_"))}
    t0 = time.monotonic()
    proc = subprocess.run(case.argv, cwd=tmp_path, env={**env, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True,
                          text=True, timeout=60)
    assert time.monotonic() - t0 <= 15, "the error must come within 15 s"
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    for text in case.expect:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr[-3000:]}"
    left = [p for p in case.absent if p.exists()]
    assert not left, f"left behind: {left}"
