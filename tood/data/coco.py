"""COCO-format detection dataset with up-front validation.

Policy (decided once, here):
- errors (:class:`DatasetError`, all problems collected into one message): unreadable or
  malformed json, missing top-level keys, malformed entries, duplicate ids, annotations
  naming an unknown image or category, missing image files or image directory, files whose
  header is not an image of the annotated size (headers only: cheap even for COCO train),
  a training split without a single usable box;
- dropped with ONE warning giving the count and the first few examples: degenerate boxes
  (w or h <= 1 px, area <= 0) and boxes outside their image by more than
  ``EDGE_TOLERANCE`` px (boxes within the tolerance are clipped);
- ``iscrowd=1`` boxes never become training targets (COCOeval handles them from ``coco``);
- in training, images left without boxes are skipped (mmdet ``filter_empty_gt``).

Boxes are xyxy float pixels of the original image; labels are contiguous ``0..C-1`` with
label ``i`` <-> COCO category ``cat_ids[i]`` (sorted category ids).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

REQUIRED_KEYS = ("images", "annotations", "categories")
MIN_BOX_SIDE = 1.0  # px; boxes with w or h <= this are dropped
EDGE_TOLERANCE = 2.0  # px a box may poke out of its image before it counts as outside
MAX_LISTED = 20  # problems listed in one error message
MAX_EXAMPLES = 5  # dropped boxes quoted in the warning


class DatasetError(ValueError):
    """A problem with a dataset's annotation file or images, naming the file and the entry."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets: boxes (N, 4) xyxy px float32, labels (N,) int64."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


def _raise_if(problems: list[str], source: Path) -> None:
    if problems:
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DatasetError(f"{len(problems)} problem(s) in {source}:\n  " + "\n  ".join(shown) + more)


def load_coco_json(ann_file: str | Path) -> dict:
    """Parse ``ann_file`` and check its top level; json errors give line and column."""
    path = Path(ann_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found (expected a COCO-format json)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level is a {type(data).__name__} (expected an object with keys {', '.join(REQUIRED_KEYS)})")
    problems = [f"{path}: missing top-level key '{k}' (expected a list)" for k in REQUIRED_KEYS if k not in data]
    problems += [
        f"{path}: top-level key '{k}' is a {type(data[k]).__name__} (expected a list)"
        for k in REQUIRED_KEYS if k in data and not isinstance(data[k], list)
    ]
    _raise_if(problems, path)
    return data


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _entry(path: Path, section: str, i: int, e: Any) -> str:
    eid = e.get("id") if isinstance(e, dict) else None
    return f"{path}: {section}[{i}]" + (f" (id {eid})" if eid is not None else "")


def _check_fields(where: str, e: Any, spec: dict[str, tuple[Callable[[Any], bool], str]]) -> list[str]:
    if not isinstance(e, dict):
        return [f"{where}: is a {type(e).__name__} (expected an object)"]
    out = []
    for key, (ok, expected) in spec.items():
        if key not in e:
            out.append(f"{where}: missing '{key}' (expected {expected})")
        elif not ok(e[key]):
            out.append(f"{where}: '{key}' is {e[key]!r} (expected {expected})")
    return out


_IMAGE_SPEC = {
    "id": (_is_int, "an integer"),
    "file_name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "width": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "height": (lambda v: _is_int(v) and v > 0, "a positive integer"),
}
_CAT_SPEC = {"id": (_is_int, "an integer"), "name": (lambda v: isinstance(v, str), "a string")}
_ANN_SPEC = {
    "id": (_is_int, "an integer"),
    "image_id": (_is_int, "an integer"),
    "category_id": (_is_int, "an integer"),
    "bbox": (lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_num, v)), "[x, y, w, h] of 4 finite numbers"),
}


def _box_problem(bbox: list[float], area: Any, width: int, height: int) -> str | None:
    """Why an (x, y, w, h) box is unusable for training, or None."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        side = "width" if w <= 0 else "height"
        return f"bbox {bbox} has non-positive {side} (expected w > 0 and h > 0)"
    if w <= MIN_BOX_SIDE or h <= MIN_BOX_SIDE:
        return f"bbox {bbox} is degenerate (expected w > {MIN_BOX_SIDE:g} px and h > {MIN_BOX_SIDE:g} px)"
    if _is_num(area) and area <= 0:
        return f"bbox {bbox} has area {area} (expected > 0)"
    t = EDGE_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t:
        return f"bbox {bbox} extends outside the {width}x{height} image (expected 0 <= x, x + w <= {width}, 0 <= y, y + h <= {height}, tolerance {t:g} px)"
    return None


def _file_exists(path: Path, listings: dict[Path, set[str]]) -> bool:
    # One listdir per directory instead of one stat per image (COCO train has 118k files).
    d = path.parent
    if d not in listings:
        listings[d] = set(os.listdir(d)) if d.is_dir() else set()
    return path.name in listings[d]


def _header_problem(path: Path, width: int, height: int) -> str | None:
    """Why ``path`` is not an image of ``width`` x ``height`` px, reading only its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return f"image file {path} is not a readable image ({type(e).__name__}) (expected a JPEG/PNG/... file)"
    if (w, h) != (width, height):
        return f"image file {path} is {w}x{h} px but width x height is {width}x{height} (expected equal)"
    return None


def _check_categories(src: Path, categories: list) -> tuple[set[int], list[str]]:
    """The valid category ids and the problems of ``categories``."""
    cats: set[int] = set()
    problems: list[str] = []
    for i, c in enumerate(categories):
        where = _entry(src, "categories", i, c)
        errs = _check_fields(where, c, _CAT_SPEC)
        if not errs and c["id"] in cats:
            errs.append(f"{where}: duplicate category id {c['id']} (expected unique ids)")
        problems += errs
        if not errs:
            cats.add(c["id"])
    return cats, problems


def _check_images(src: Path, img_dir: Path, entries: list) -> tuple[dict[int, dict], list[str]]:
    """The valid image entries by id (their files found under ``img_dir``, headers matching
    width and height) and the problems of ``entries``."""
    images: dict[int, dict] = {}
    problems: list[str] = []
    listings: dict[Path, set[str]] = {}
    for i, im in enumerate(entries):
        where = _entry(src, "images", i, im)
        errs = _check_fields(where, im, _IMAGE_SPEC)
        if not errs and im["id"] in images:
            errs.append(f"{where}: duplicate image id {im['id']} (expected unique ids)")
        if not errs and img_dir.is_dir() and not _file_exists(img_dir / im["file_name"], listings):
            errs.append(f"{where}: image file {img_dir / im['file_name']} not found (expected it under {img_dir})")
        elif not errs and img_dir.is_dir():
            errs += [f"{where}: {why}" for why in [_header_problem(img_dir / im["file_name"], im["width"], im["height"])] if why]
        problems += errs
        if not errs:
            images[im["id"]] = im
    return images, problems


def _collect_boxes(src: Path, data: dict, images: dict[int, dict], label_of: dict[int, int]
                   ) -> tuple[dict[int, tuple[list, list]], list[str], list[str]]:
    """Per valid image: its usable boxes (xyxy pixels, clipped to the image) and labels; the
    problems of the annotations and the messages of the ones dropped (degenerate or outside)."""
    known_image_ids = {im["id"] for im in data["images"] if isinstance(im, dict) and _is_int(im.get("id"))}
    per_image: dict[int, tuple[list, list]] = {k: ([], []) for k in images}
    problems, dropped = [], []
    for i, a in enumerate(data["annotations"]):
        where = _entry(src, "annotations", i, a)
        errs = _check_fields(where, a, _ANN_SPEC)
        if not errs and a["image_id"] not in known_image_ids:
            errs.append(f"{where}: unknown image_id {a['image_id']} (expected the id of an entry in images)")
        if not errs and a["category_id"] not in label_of:
            errs.append(f"{where}: unknown category_id {a['category_id']} (expected one of {sorted(label_of)[:20]})")
        if not errs and a.get("iscrowd", 0) not in (0, 1):
            errs.append(f"{where}: 'iscrowd' is {a['iscrowd']!r} (expected 0 or 1)")
        problems += errs
        if errs or a["image_id"] not in images:
            continue
        x, y, w, h = a["bbox"]
        a.setdefault("area", float(w * h))
        a.setdefault("iscrowd", 0)
        if a["iscrowd"]:
            continue
        im = images[a["image_id"]]
        why = _box_problem(a["bbox"], a["area"], im["width"], im["height"])
        if why is not None:
            dropped.append(f"{where}: {why}")
            continue
        boxes, labels = per_image[a["image_id"]]
        boxes.append((max(x, 0.0), max(y, 0.0), min(x + w, im["width"]), min(y + h, im["height"])))
        labels.append(label_of[a["category_id"]])
    return per_image, problems, dropped


def validate_coco(data: dict, ann_file: str | Path, img_dir: str | Path, train: bool) -> tuple[list[ImageRecord], list[int], list[str]]:
    """Check ``data`` (parsed by :func:`load_coco_json`) against ``img_dir``.

    Returns (records, sorted category ids, drop messages); raises :class:`DatasetError`
    listing every error. Fills COCOeval's defaults (``area`` = w*h, ``iscrowd`` = 0) into
    annotations that lack them.
    """
    src, img_dir = Path(ann_file), Path(img_dir)
    problems: list[str] = []
    if not img_dir.is_dir():
        problems.append(f"{src}: image directory {img_dir} not found (expected the folder holding images[*].file_name)")
    cats, errs = _check_categories(src, data["categories"])
    images, image_errs = _check_images(src, img_dir, data["images"])
    cat_ids = sorted(cats)
    per_image, ann_errs, dropped = _collect_boxes(src, data, images, {c: k for k, c in enumerate(cat_ids)})
    problems += errs + image_errs + ann_errs
    if train and not problems and not any(boxes for boxes, _ in per_image.values()):
        why = f"; all {len(dropped)} were dropped, e.g. {dropped[0]}" if dropped else ""
        problems.append(f"{src}: annotations: no image has a usable box ({len(data['annotations'])} annotations{why}) "
                        "(expected at least one non-crowd box inside its image for training)")
    _raise_if(problems, src)
    records = []
    for image_id, im in images.items():
        boxes, labels = per_image[image_id]
        if train and not boxes:
            continue
        records.append(ImageRecord(
            image_id, img_dir / im["file_name"], im["width"], im["height"],
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64),
        ))
    return records, cat_ids, dropped


def decode_image(path: Path, expected_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Read ``path`` with Pillow as RGB -> uint8 (3, H, W); errors name the path."""
    try:
        with Image.open(path) as im:
            arr = np.array(im.convert("RGB"))  # (H, W, 3); a copy, so writable
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e}) (expected a readable image file)") from None
    if expected_hw is not None and arr.shape[:2] != tuple(expected_hw):
        raise DatasetError(
            f"{path}: decoded size {arr.shape[1]}x{arr.shape[0]} differs from the annotation's "
            f"width x height {expected_hw[1]}x{expected_hw[0]} (expected equal)"
        )
    return torch.from_numpy(arr).permute(2, 0, 1)


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset.

    ``transforms(sample, generator)`` is applied to each sample (see
    :mod:`tood.data.transforms`). With ``seed`` set, item ``i`` of epoch ``e`` uses a
    generator seeded from ``(seed, e, i)``, so augmentation does not depend on worker
    count or order; call :meth:`set_epoch` before each epoch. Without ``seed`` the global
    torch RNG is used (DataLoader seeds it per worker).

    A sample before transforms: ``image`` uint8 (3, H, W) RGB, ``boxes`` (N, 4) float32
    xyxy px, ``labels`` (N,) int64 in 0..C-1, ``image_id`` int, ``orig_size`` (h, w).
    """

    def __init__(self, ann_file: str | Path, img_dir: str | Path, transforms: Callable | None = None,
                 train: bool = True, seed: int | None = None) -> None:
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        data = load_coco_json(self.ann_file)
        self.records, self.cat_ids, dropped = validate_coco(data, self.ann_file, self.img_dir, train)
        if dropped:
            examples = "\n  ".join(dropped[:MAX_EXAMPLES])
            warnings.warn(f"{self.ann_file}: dropped {len(dropped)} unusable box(es), e.g.:\n  {examples}", stacklevel=2)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        by_id = {c["id"]: c["name"] for c in data["categories"]}
        self.class_names = [by_id[c] for c in self.cat_ids]
        self.image_ids = [r.image_id for r in self.records]
        self.transforms, self.train, self.seed, self.epoch = transforms, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (only matters with ``seed``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rec = self.records[idx]
        sample = {
            "image": decode_image(rec.path, (rec.height, rec.width)),
            "boxes": torch.from_numpy(rec.boxes.copy()),
            "labels": torch.from_numpy(rec.labels.copy()),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
        }
        if self.transforms is None:
            return sample
        generator = None
        if self.seed is not None:
            state = np.random.SeedSequence([self.seed, self.epoch, idx]).generate_state(2, dtype=np.uint32)
            generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        return self.transforms(sample, generator)
