import colorsys
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from tood.data.coco import CocoDetection
from tood.data.synthetic import Knobs, class_hues, main, synthesize


def _pixels(images_dir):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(images_dir.glob("*.png"))}


def _boxes_xyxy(anns):
    b = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
    return np.c_[b[:, :2], b[:, :2] + b[:, 2:]]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """60 training images with default knobs: enough for stable property fractions."""
    root = tmp_path_factory.mktemp("proxy")
    paths = synthesize(root, n_train=60, n_val=2, seed=0)
    return paths, json.loads(paths.train_ann.read_text())


def test_deterministic_for_a_seed_and_different_for_another(tmp_path):
    a = synthesize(tmp_path / "a", 4, 2, seed=5)
    b = synthesize(tmp_path / "b", 4, 2, seed=5)
    c = synthesize(tmp_path / "c", 4, 2, seed=6)
    for ann in ("train_ann", "val_ann"):
        assert getattr(a, ann).read_bytes() == getattr(b, ann).read_bytes()
        assert getattr(a, ann).read_bytes() != getattr(c, ann).read_bytes()
    pa, pb, pc = _pixels(a.train_images), _pixels(b.train_images), _pixels(c.train_images)
    assert list(pa) == ["000000.png", "000001.png", "000002.png", "000003.png"]
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert not any(np.array_equal(pa[k], pc[k]) for k in pa)


def test_annotations_are_valid_coco(proxy):
    paths, data = proxy
    coco = COCO(str(paths.train_ann))
    assert len(coco.getImgIds()) == 60 and len(coco.getAnnIds()) == len(data["annotations"]) > 150
    cat_ids = set(coco.getCatIds())
    assert cat_ids == {1, 2, 3, 4, 5}
    for a in data["annotations"]:
        im = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["category_id"] in cat_ids and a["iscrowd"] == 0
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"] and w > 1 and h > 1
        assert 0 < a["area"] <= w * h
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our own validator finds nothing to drop either
        ds = CocoDetection(paths.train_ann, paths.train_images)
    assert len(ds) == sum(1 for i in coco.getImgIds() if coco.getAnnIds(imgIds=[i]))
    assert data["info"]["knobs"] == json.loads(json.dumps(Knobs().__dict__)) and data["info"]["seed"] == 0


def test_designed_properties(proxy):
    _, data = proxy
    anns = data["annotations"]
    boxes = _boxes_xyxy(anns)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # elongation: body aspect log-uniform in [1, 5] gives ~30% >= 3 before the small-object cap
    aspect = np.array([a["aspect"] for a in anns])
    assert 0.15 < np.mean(aspect >= 3) < 0.45 and aspect.max() > 4.5
    assert np.mean(np.maximum(w, h) / np.minimum(w, h) >= 3) > 0.1  # boxes themselves, rotation included
    angles = np.array([a["angle"] for a in anns]) % 180
    assert np.mean(np.isin(angles, [0, 90])) < 0.85 and np.mean(angles == 90) > 0.2  # several orientations
    # crowding: an object's box touches or overlaps another box of its image
    img = np.array([a["image_id"] for a in anns])
    iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    touching = (iw >= 0) & (ih >= 0) & (img[:, None] == img[None, :]) & ~np.eye(len(anns), dtype=bool)
    assert 0.3 < touching.any(1).mean() < 0.8
    overlapping = (iw > 0) & (ih > 0) & touching
    cats = np.array([a["category_id"] for a in anns])
    same = overlapping & (cats[:, None] == cats[None, :])
    assert same.any() and (overlapping & ~same).any()  # both same- and cross-class crowds
    # misalignment: the cue centre sits off the box centre by >= 15% of the long side
    cue = np.array([a["cue"] for a in anns])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (np.linalg.norm(cue[:, :2] - centre, axis=1) / np.maximum(w, h) > 0.15).all()
    # scale range over several FPN levels: sqrt(area) from < 16 px to > 96 px
    side = np.sqrt(w * h)
    assert side.min() < 16 and side.max() > 96 and np.mean(side > 32) > 0.2
    assert np.bincount(cats, minlength=6)[1:].min() > 0.1 * len(anns)  # every class well represented


def test_cue_pixels_carry_the_class_and_the_centre_does_not(tmp_path):
    paths = synthesize(tmp_path, 30, 0, seed=1, noise=0.0)
    data = json.loads(paths.train_ann.read_text())
    pixels = _pixels(paths.train_images)
    hues = class_hues(Knobs().num_classes)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    cue_ok, centre_plain = [], []
    for a in data["annotations"]:
        px = pixels[files[a["image_id"]]]
        cx, cy, _ = a["cue"]
        hh, s, _ = colorsys.rgb_to_hsv(*(px[int(cy), int(cx)] / 255.0))
        dist = min(abs(hh - hues[a["category_id"] - 1]), 1 - abs(hh - hues[a["category_id"] - 1]))
        cue_ok.append(s > 0.6 and dist < 16 / 360)
        x, y, w, h = a["bbox"]
        _, s_centre, _ = colorsys.rgb_to_hsv(*(px[int(y + h / 2), int(x + w / 2)] / 255.0))
        centre_plain.append(s_centre < 0.45)
    assert np.mean(cue_ok) > 0.97  # the cue is drawn where recorded, in its class hue
    assert np.mean(centre_plain) > 0.75  # the box centre is body (or background), not cue


def test_knobs_take_effect_and_unknown_knobs_fail(tmp_path):
    p = synthesize(tmp_path / "a", 12, 0, seed=2, aspect_max=1.0, crowd_prob=0.0, objects=(3, 3), num_classes=3)
    data = json.loads(p.train_ann.read_text())
    assert {a["aspect"] for a in data["annotations"]} == {1.0}
    assert {a["category_id"] for a in data["annotations"]} <= {1, 2, 3} and len(data["categories"]) == 3
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])
    assert per_image.max() <= 3 and per_image.sum() > 24
    assert data["info"]["knobs"]["objects"] == [3, 3]
    with pytest.raises(TypeError, match=r"unknown knob\(s\) \['crowding'\]"):
        synthesize(tmp_path / "b", 1, 0, seed=0, crowding=0.5)
    with pytest.raises(ValueError, match="num_classes: 12"):
        synthesize(tmp_path / "b", 1, 0, seed=0, num_classes=12)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--train", "3", "--val", "2", "--seed", "4", "--num-classes", "4",
                 "--objects", "1", "3", "--noise", "2.5", "--image-size", "96", "128"]) == 0
    train = json.loads((out / "annotations" / "train.json").read_text())
    val = json.loads((out / "annotations" / "val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 2 and len(list((out / "val").glob("*.png"))) == 2
    assert train["info"]["knobs"]["num_classes"] == 4 and train["info"]["knobs"]["objects"] == [1, 3]
    assert train["info"]["knobs"]["noise"] == 2.5 and train["info"]["image_size"] == [96, 128]
    assert np.asarray(Image.open(out / "train" / "000000.png")).shape == (96, 128, 3)
    assert "wrote 3 + 2 images" in capsys.readouterr().out


def test_config_knobs_reach_the_generator_and_a_mismatch_is_an_error(tmp_path):
    from tood.config import ConfigError, DataConfig, SynthConfig
    from tood.data.loaders import ensure_synthetic

    synth = SynthConfig(n_train=6, n_val=2, seed=3, image_size=96, objects=(2, 3), aspect_max=1.5, cue_size=0.8)
    data = DataConfig(root=str(tmp_path / "p"), train_ann="annotations/train.json", train_images="train",
                      val_ann="annotations/val.json", val_images="val", synthetic=synth)
    ensure_synthetic(data)
    train = json.loads((tmp_path / "p/annotations/train.json").read_text())
    assert train["info"]["knobs"]["aspect_max"] == 1.5 and train["info"]["knobs"]["cue_size"] == 0.8
    assert max(a["aspect"] for a in train["annotations"]) <= 1.5 and len(train["images"]) == 6
    ensure_synthetic(data)  # same knobs: kept as it is
    data.synthetic = SynthConfig(**{**synth.__dict__, "aspect_max": 3.0})
    with pytest.raises(ConfigError, match=r"train\.json: synthetic data was generated with .*'aspect_max': 1\.5"):
        ensure_synthetic(data)
