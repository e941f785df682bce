import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tood.data.coco import CocoDetection, DatasetError, decode_image
from tood.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, Transforms, build_transforms, collate, hflip, normalize, rescale_size, resize,
)

# Category ids deliberately unsorted and non-contiguous: labels follow sorted ids [1, 3, 7].
CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}]


def _write_dataset(tmp_path, annotations, images=None, categories=CATEGORIES):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images = images or [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 40}]
    for im in images:
        Image.fromarray(rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)).save(img_dir / im["file_name"])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann, img_dir


def _ann(i, image_id, cat, bbox, **kw):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, **kw}


GOOD = [_ann(10, 1, 7, [4, 6, 20, 10]), _ann(11, 1, 1, [30, 0, 34, 48]), _ann(12, 2, 3, [0, 0, 40, 40])]


def test_loads_valid_dataset_and_maps_labels(tmp_path):
    ann, img_dir = _write_dataset(tmp_path, GOOD)
    ds = CocoDetection(ann, img_dir)
    assert ds.cat_ids == [1, 3, 7] and ds.class_names == ["one", "three", "seven"]
    assert ds.image_ids == [1, 2] and len(ds.coco.getAnnIds()) == 3
    s = ds[0]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 48, 64)
    expected = np.asarray(Image.open(img_dir / "a.png").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(s["image"].numpy(), expected)
    assert torch.equal(s["boxes"], torch.tensor([[4.0, 6.0, 24.0, 16.0], [30.0, 0.0, 64.0, 48.0]]))
    assert s["labels"].tolist() == [2, 0] and s["image_id"] == 1 and s["orig_size"] == (48, 64)


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetError, match=rf"{path}: malformed JSON at line 2 column 12"):
        CocoDetection(path, tmp_path)


def test_missing_top_level_keys_listed_together(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text('{"images": []}')
    with pytest.raises(DatasetError) as e:
        CocoDetection(path, tmp_path)
    msg = str(e.value)
    assert "2 problem(s)" in msg
    assert f"{path}: missing top-level key 'annotations' (expected a list)" in msg
    assert f"{path}: missing top-level key 'categories' (expected a list)" in msg


def test_all_errors_collected_with_file_entry_and_expected(tmp_path):
    anns = GOOD + [_ann(13, 2, 99, [1, 1, 5, 5]), _ann(14, 5, 1, [1, 1, 5, 5]), {"id": 15, "image_id": 1, "category_id": 1}]
    ann, img_dir = _write_dataset(tmp_path, anns)
    (img_dir / "b.png").unlink()
    with pytest.raises(DatasetError) as e:
        CocoDetection(ann, img_dir)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert f"{ann}: images[1] (id 2): image file {img_dir / 'b.png'} not found (expected it under {img_dir})" in msg
    assert f"{ann}: annotations[3] (id 13): unknown category_id 99 (expected one of [1, 3, 7])" in msg
    assert f"{ann}: annotations[4] (id 14): unknown image_id 5 (expected the id of an entry in images)" in msg
    assert f"{ann}: annotations[5] (id 15): missing 'bbox' (expected [x, y, w, h] of 4 finite numbers)" in msg


def test_unreadable_image_names_path(tmp_path):
    ann, img_dir = _write_dataset(tmp_path, GOOD)
    (img_dir / "b.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"images\[1\] \(id 2\): image file .*b\.png is not a readable image"):
        CocoDetection(ann, img_dir)  # the header is read up front, before any training
    with pytest.raises(DatasetError, match=rf"{img_dir / 'b.png'}: cannot decode image"):
        decode_image(img_dir / "b.png")  # a file broken after validation still names its path


def test_decoded_size_must_match_json(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    ann, img_dir = _write_dataset(tmp_path, [_ann(1, 1, 1, [0, 0, 5, 5])], images=images)
    Image.new("RGB", (30, 20)).save(img_dir / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png is 30x20 px but width x height is 64x48 \(expected equal\)"):
        CocoDetection(ann, img_dir)
    with pytest.raises(DatasetError, match="decoded size 30x20 differs .* 64x48"):
        decode_image(img_dir / "a.png", (48, 64))


def test_degenerate_boxes_dropped_with_one_warning(tmp_path):
    bad = [_ann(20, 1, 1, [10, 20, -3, 5]), _ann(21, 1, 1, [10, 20, 0.5, 5]), _ann(22, 1, 1, [50, 10, 20, 10]),
           _ann(23, 1, 1, [5, 5, 4, 4], area=0)]
    ann, img_dir = _write_dataset(tmp_path, GOOD + bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(ann, img_dir)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert f"{ann}: dropped 4 unusable box(es)" in msg
    assert f"{ann}: annotations[3] (id 20): bbox [10, 20, -3, 5] has non-positive width (expected w > 0 and h > 0)" in msg
    assert "annotations[4] (id 21): bbox [10, 20, 0.5, 5] is degenerate (expected w > 1 px and h > 1 px)" in msg
    assert "annotations[5] (id 22): bbox [50, 10, 20, 10] extends outside the 64x48 image" in msg
    assert "annotations[6] (id 23): bbox [5, 5, 4, 4] has area 0 (expected > 0)" in msg
    assert len(ds[0]["boxes"]) == 2  # only the two good boxes of image 1 remain
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 6  # evaluation still sees the file as written


def test_box_within_tolerance_is_clipped(tmp_path):
    ann, img_dir = _write_dataset(tmp_path, [_ann(1, 1, 3, [-1.5, 40, 20, 9.5])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(ann, img_dir)
    assert ds[0]["boxes"].tolist() == [[0.0, 40.0, 18.5, 48.0]]


def test_crowd_boxes_ignored(tmp_path):
    anns = [_ann(1, 1, 1, [4, 4, 10, 10]), _ann(2, 1, 3, [20, 4, 30, 30], iscrowd=1), _ann(3, 2, 7, [0, 0, 40, 40], iscrowd=1)]
    ann, img_dir = _write_dataset(tmp_path, anns)
    train = CocoDetection(ann, img_dir, train=True)
    assert train.image_ids == [1]  # image 2 has only a crowd box: no training targets
    assert train[0]["boxes"].tolist() == [[4.0, 4.0, 14.0, 14.0]] and train[0]["labels"].tolist() == [0]
    val = CocoDetection(ann, img_dir, train=False)
    assert val.image_ids == [1, 2] and val[1]["boxes"].shape == (0, 4)
    assert val.coco.anns[3]["iscrowd"] == 1


def test_rescale_size_matches_mmcv_rule():
    assert rescale_size(480, 640, (1333, 800)) == (800, 1067)  # factor 800/480; 640*5/3 = 1066.67
    assert rescale_size(1000, 200, (1333, 800)) == (1333, 267)  # factor 1.333 (long edge binds)
    assert rescale_size(1000, 200, (800, 1333)) == (1333, 267)  # order of the pair does not matter


def _sample(h, w, boxes, fill=None):
    image = torch.full((3, h, w), 100, dtype=torch.uint8) if fill is None else fill
    return {"image": image, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.zeros(len(boxes), dtype=torch.long),
            "image_id": 1, "orig_size": (h, w)}


def test_resize_box_geometry_by_hand():
    out = resize(_sample(30, 100, [[10, 3, 90, 27]]), (64, 64))
    # factor min(64/100, 64/30) = 0.64 -> (int(19.2 + .5), 64) = (19, 64); realised h_scale = 19/30
    assert out["image"].shape == (3, 19, 64) and out["img_size"] == (19, 64)
    assert out["scale_factor"] == pytest.approx((0.64, 19 / 30))
    assert out["boxes"][0].tolist() == pytest.approx([6.4, 1.9, 57.6, 17.1], abs=1e-5)
    assert torch.allclose(out["image"], torch.tensor(100.0))  # antialiased shrink keeps a flat image flat
    up = resize(_sample(10, 20, [[0, 0, 20, 10]]), (80, 40))  # factor 4
    assert up["image"].shape == (3, 40, 80) and up["boxes"][0].tolist() == [0, 0, 80, 40]


def test_hflip_geometry_by_hand():
    img = torch.zeros((3, 4, 100), dtype=torch.uint8)
    img[:, :, 0] = 255
    out = hflip(_sample(4, 100, [[10, 5, 30, 25]], fill=img))
    assert out["boxes"].tolist() == [[70, 5, 90, 25]] and out["flipped"]
    assert (out["image"][:, :, 99] == 255).all() and (out["image"][:, :, 0] == 0).all()
    back = hflip(out)
    assert back["boxes"].tolist() == [[10, 5, 30, 25]] and not back["flipped"]


def test_normalize_values():
    img = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).repeat(1, 2, 2)
    img[0, 0, 0] += IMAGENET_STD[0] * 2
    out = normalize({"image": img})["image"]
    assert out[0, 0, 0].item() == pytest.approx(2.0) and out.abs().sum().item() == pytest.approx(2.0)


def test_transforms_deterministic_for_a_generator():
    t = Transforms((400, 300), multiscale=(100, 200, 300), flip_prob=0.5)
    src = _sample(60, 80, [[0, 0, 10, 10]])
    runs = [[t(src, torch.Generator().manual_seed(s))["img_size"] for s in range(30)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert {min(hw) for hw in runs[0]} == {100, 200, 300}  # value mode: short side from the list
    flips = [t(src, torch.Generator().manual_seed(s))["flipped"] for s in range(30)]
    assert 5 < sum(flips) < 25
    rng = Transforms((1333, 800), multiscale=(480, 800), multiscale_mode="range")
    shorts = {min(rng(_sample(100, 100, []), torch.Generator().manual_seed(s))["img_size"]) for s in range(30)}
    assert min(shorts) >= 480 and max(shorts) <= 800 and len(shorts) > 10
    wide = rng(_sample(100, 1000, []), torch.Generator().manual_seed(0))
    assert wide["img_size"][1] == 1333  # long edge cap binds for a 1:10 image
    assert build_transforms(False, (64, 64)).flip_prob == 0.0


def resize_norm(sample):
    return normalize({**sample, "image": sample["image"].float()})


def test_collate_pads_images_and_gts():
    a = {**_sample(50, 70, [[1, 2, 3, 4], [5, 6, 7, 8]]), "labels": torch.tensor([2, 1]), "image_id": 7}
    b = {**_sample(64, 33, []), "image_id": 9, "orig_size": (128, 66)}
    batch = collate([resize_norm(a), resize_norm(b)], size_divisor=32)
    assert batch.images.shape == (2, 3, 64, 96)
    assert (batch.images[0, :, 50:] == 0).all() and (batch.images[0, :, :, 70:] == 0).all()
    assert (batch.images[1, :, :, 33:] == 0).all()
    assert torch.equal(batch.images[0, :, :50, :70], resize_norm(a)["image"])
    assert batch.gt_boxes.shape == (2, 2, 4) and batch.gt_mask.tolist() == [[True, True], [False, False]]
    assert batch.gt_labels.tolist() == [[2, 1], [0, 0]] and batch.gt_boxes[1].abs().sum() == 0
    assert batch.image_ids == [7, 9] and batch.img_sizes.tolist() == [[50, 70], [64, 33]]
    assert batch.orig_sizes.tolist() == [[50, 70], [128, 66]] and batch.flipped.tolist() == [False, False]
    empty = collate([resize_norm(b)])
    assert empty.gt_boxes.shape == (1, 1, 4) and not empty.gt_mask.any()
    with pytest.raises(TypeError, match="expected float32"):
        collate([a])


def test_dataset_seeded_augmentation_is_per_epoch(tmp_path):
    ann, img_dir = _write_dataset(tmp_path, GOOD)
    tf = build_transforms(True, (64, 64), multiscale=(32, 40, 48, 56, 64), flip_prob=0.5)
    ds = CocoDetection(ann, img_dir, transforms=tf, seed=3)
    first = [(ds[0]["img_size"], ds[0]["flipped"]) for _ in range(2)]
    assert first[0] == first[1]
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        seen.add((ds[0]["img_size"], ds[0]["flipped"]))
    assert len(seen) > 1
    batch = collate([ds[0], ds[1]])
    assert batch.images.shape[-1] % 32 == 0 and batch.gt_mask.sum() == 3
    s = ds[0]
    fx, fy = s["scale_factor"]
    assert s["img_size"] == (round(48 * fy), round(64 * fx))


def test_missing_annotation_file_and_image_dir(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'nope.json'}: annotation file not found"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
    ann, _ = _write_dataset(tmp_path, GOOD)
    with pytest.raises(DatasetError, match=rf"{ann}: image directory {tmp_path / 'elsewhere'} not found"):
        CocoDetection(ann, tmp_path / "elsewhere")
