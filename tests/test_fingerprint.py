"""Content fingerprints of path inputs (tood.data.fingerprint) and their place in the trial key.

The unit tests build trial configs the way a launch does (the smoke grid expanded with
``data.synthetic=null`` and ``data.root`` on a folder written by the synthetic generator) and
change files at the same path; the slow test runs the real launch twice around a relabelling.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from orchestration.grid import expand_grid
from orchestration.suite import trial_key, unique_trials
from tests.test_orchestration import launch  # noqa: F401  (fixture of the slow test)
from tood.data import fingerprint
from tood.data.fingerprint import CACHE_ENV, MISSING, fingerprint_inputs, image_set_digest
from tood.data.synthetic import synthesize

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments/smoke.yaml"
# trial_key of the smoke grid's two rows (profile proxy, seed 0) computed by the code before
# fingerprints existed (commit 20d6004): synthetic-data keys of the published store stay valid
SMOKE_KEYS = {"head=parallel,assigner=atss,seed=0": "e275028891959462", "head=t_head,assigner=tal,seed=0": "1a56c27ee0f37bf5"}


@pytest.fixture(autouse=True)
def cache_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache" / "fingerprints.json"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """A COCO-format folder of 3 train / 2 val images (annotations/{train,val}.json, train/, val/)."""
    root = tmp_path / "coco"
    synthesize(root, n_train=3, n_val=2, seed=0, image_size=32, size=(10, 20), objects=(1, 3))
    return root


def _specs(root: Path, seeds=(0,), **sets):
    overrides = {"data.synthetic": None, "data.root": str(root), **sets}
    return expand_grid(SMOKE, profile="proxy", seeds=list(seeds), overrides=overrides)


def _config(root: Path, **sets) -> dict:
    return _specs(root, **sets)[0].config


def _relabel(ann: Path) -> None:
    """Every annotation's category_id moved to the next class (1..5): same length, same size."""
    coco = json.loads(ann.read_text())
    for a in coco["annotations"]:
        a["category_id"] = a["category_id"] % 5 + 1
    ann.write_text(json.dumps(coco, separators=(",", ":")) + "\n")


def _counting_reads(monkeypatch) -> list[Path]:
    reads: list[Path] = []
    real = fingerprint.hash_bytes

    def counted(path: Path) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint, "hash_bytes", counted)
    return reads


def test_relabelled_annotations_at_the_same_path_change_the_key(data):
    cfg = _config(data)
    ann = data / "annotations/train.json"
    before, key = fingerprint_inputs(cfg), trial_key(cfg)
    size = ann.stat().st_size
    _relabel(ann)
    assert ann.stat().st_size == size  # only the content tells them apart
    after = fingerprint_inputs(cfg)
    assert after["train_ann"] == hashlib.sha256(ann.read_bytes()).hexdigest() != before["train_ann"]
    assert {k: v for k, v in after.items() if k != "train_ann"} == {k: v for k, v in before.items() if k != "train_ann"}
    assert trial_key(cfg) != key


def test_unchanged_inputs_keep_the_key_and_the_second_is_served_from_the_cache(data, cache_file, monkeypatch):
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)  # the files were written a moment ago
    reads = _counting_reads(monkeypatch)
    cfg = _config(data)
    key = trial_key(cfg)
    anns = [data / "annotations/train.json", data / "annotations/val.json"]
    assert sorted(reads) == anns  # the annotation files are read; the images are not
    assert trial_key(cfg) == key and len(reads) == 2  # the second: a stat per file, no read
    files = json.loads(cache_file.read_text())["files"]
    for ann in anns:
        st = ann.stat()
        assert files[str(ann)] == {"stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino],
                                   "sha256": hashlib.sha256(ann.read_bytes()).hexdigest()}


def test_a_file_changed_just_before_hashing_is_not_cached(data, cache_file):
    """Within the racy window the cache stays out: a rewrite in the same timestamp tick would
    leave size, times and inode as they were."""
    cfg = _config(data)
    ann = data / "annotations/train.json"
    first = fingerprint_inputs(cfg)["train_ann"]
    assert not cache_file.exists()
    st = ann.stat()
    _relabel(ann)
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint_inputs(cfg)["train_ann"] != first


def test_a_file_replaced_with_its_old_size_and_mtime_is_hashed_again(data, monkeypatch):
    """What ``rsync -t`` or ``cp -p`` of another file does: only the inode (or the status-change
    time, for a rewrite in place) is left to tell; a cache keyed by (path, size, mtime) misses it."""
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    cfg = _config(data)
    ann = data / "annotations/train.json"
    first = fingerprint_inputs(cfg)["train_ann"]
    st = ann.stat()
    tmp = ann.with_name("incoming.json")
    tmp.write_bytes(ann.read_bytes())
    _relabel(tmp)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, ann)
    new = ann.stat()
    assert (new.st_size, new.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert fingerprint_inputs(cfg)["train_ann"] == hashlib.sha256(ann.read_bytes()).hexdigest() != first


def test_an_added_image_changes_the_key(data):
    cfg = _config(data)
    key, before = trial_key(cfg), fingerprint_inputs(cfg)
    (data / "val/000002.png").write_bytes((data / "val/000001.png").read_bytes())
    after = fingerprint_inputs(cfg)
    assert after["val_images"] != before["val_images"] and after["train_images"] == before["train_images"]
    assert trial_key(cfg) != key


def test_new_weights_at_the_same_path_change_the_key(data, tmp_path):
    weights = tmp_path / "resnet.pth"
    weights.write_bytes(b"a" * 100)
    cfg = _config(data, **{"model.backbone.pretrained": str(weights), "model.backbone.pretrain": None})
    key = trial_key(cfg)
    assert fingerprint_inputs(cfg)["pretrained"] == hashlib.sha256(b"a" * 100).hexdigest()
    weights.write_bytes(b"b" * 100)
    assert trial_key(cfg) != key
    # made by the pre-training recipe: the recipe is in the key, the file is checked against it
    made = _config(data, **{"model.backbone.pretrained": str(weights)})
    assert "pretrained" not in fingerprint_inputs(made)


def test_touched_annotation_keeps_the_key_but_a_touched_image_changes_the_image_set(data):
    """Annotations are hashed by content; images by their listing (size and mtime), the
    documented trade-off that spares reading 18 GB of COCO images."""
    cfg = _config(data)
    key, before = trial_key(cfg), fingerprint_inputs(cfg)
    ann, image = data / "annotations/train.json", data / "train/000000.png"
    os.utime(ann, ns=(ann.stat().st_atime_ns, ann.stat().st_mtime_ns + 10**10))
    assert fingerprint_inputs(cfg) == before and trial_key(cfg) == key
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**10))
    after = fingerprint_inputs(cfg)
    assert after["train_images"] != before["train_images"] and trial_key(cfg) != key


def test_image_set_digest_is_the_sorted_listing_by_hand(tmp_path):
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    (folder / "b/2.png").write_bytes(b"xyz")
    (folder / "a.png").write_bytes(b"")
    os.utime(folder / "b/2.png", ns=(0, 2_000_000_000))
    os.utime(folder / "a.png", ns=(0, 1_000_000_000))
    listing = "a.png 0 1000000000\nb/2.png 3 2000000000\n"
    assert image_set_digest(folder) == hashlib.sha256(listing.encode()).hexdigest()


def test_missing_inputs_are_marked(tmp_path):
    cfg = _config(tmp_path / "absent", **{"model.backbone.pretrained": str(tmp_path / "absent.pth"),
                                          "model.backbone.pretrain": None})
    names = ("train_ann", "train_images", "val_ann", "val_images", "pretrained")
    assert fingerprint_inputs(cfg) == dict.fromkeys(names, MISSING)


def test_an_unreadable_cache_counts_as_empty(data, cache_file, monkeypatch):
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json")
    cfg = _config(data)
    assert fingerprint_inputs(cfg)["val_ann"] == hashlib.sha256((data / "annotations/val.json").read_bytes()).hexdigest()
    assert len(json.loads(cache_file.read_text())["files"]) == 2


def test_synthetic_trial_keys_are_unchanged(tmp_path):
    """No path input, no fingerprint: the keys are those of the code before fingerprints, and the
    folder ``data.root`` names (generated from the recipe in the key) is never read."""
    specs = expand_grid(SMOKE, profile="proxy")
    assert {s.name: trial_key(s.config) for s in specs} == SMOKE_KEYS
    for spec in specs:
        assert fingerprint_inputs(spec.config) == {}
        elsewhere = json.loads(json.dumps(spec.config))
        elsewhere["data"]["root"] = str(tmp_path / "no_such_folder")
        assert trial_key(elsewhere) == SMOKE_KEYS[spec.name]


def test_a_grid_lists_each_image_folder_once(data, monkeypatch):
    listed: list[Path] = []
    real = fingerprint.image_set_digest
    monkeypatch.setattr(fingerprint, "image_set_digest", lambda folder: listed.append(folder) or real(folder))
    specs = _specs(data, seeds=(0, 1, 2))
    trials = unique_trials([specs])
    assert len(specs) == 6 and len(trials) == 6
    assert sorted(listed) == [data / "train", data / "val"]
    assert [t.key for t in trials] == [trial_key(s.config) for s in specs]


@pytest.mark.slow
def test_a_relaunch_after_relabelling_trains_again(launch, monkeypatch, tmp_path):
    """The smoke grid on a `tood data synth` folder, launched, relaunched after every training
    annotation's class changed (same path), and relaunched unchanged."""
    from tood.cli import main as tood_main

    monkeypatch.chdir(launch.path)
    data = launch.path / "coco"
    assert tood_main(["data", "synth", "--out", str(data), "--train", "48", "--val", "16", "--image-size", "128",
                      "--objects", "2", "6", "--size", "20", "80"]) == 0
    sets = ["--set", "data.synthetic=null", "--set", f"data.root={data}", "--set", "train.epochs=1"]

    def trainings(name: str) -> dict:
        driver = launch.start("run", str(SMOKE), "--name", name, *sets)
        assert driver.wait(timeout=600) == 0, driver.output()
        counts = json.loads((launch.path / f"ray/{name}/tood_launch.json").read_text())["trainings"]
        return {k: counts[k] for k in ("without_dedup", "unique", "reused_runs", "to_train")}  # (prefix counts aside)

    assert trainings("first") == {"without_dedup": 2, "unique": 2, "reused_runs": 0, "to_train": 2}
    _relabel(data / "annotations/train.json")
    assert trainings("relabelled") == {"without_dedup": 2, "unique": 2, "reused_runs": 0, "to_train": 2}
    assert trainings("unchanged") == {"without_dedup": 2, "unique": 2, "reused_runs": 2, "to_train": 0}
