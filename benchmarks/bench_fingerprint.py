"""What the content fingerprint of a trial's inputs costs on a COCO-sized dataset.

Writes, with a fixed seed, into a temporary folder laid out like COCO 2017 (the default
``data`` paths of tood.config): ``instances_train2017.json`` with the shape and size of the real
one (118,287 images, ~860k annotations with polygon segmentations, ~450 MB), a val file of
5,000 images, and one EMPTY file per image (the fingerprint lists names, sizes and times; it
never reads an image). Then times :func:`tood.data.fingerprint.fingerprint_inputs` twice
with a fresh digest cache: cold (every annotation byte hashed) and cached (what every later
launch pays: a stat per annotation file, a listing of the image folders; median of 5), and
the parts: hashing the train annotations, a cached digest, the train images' listing. The folder and the
cache are deleted afterwards.

The cold run hashes a file the page cache still holds (it was just written): it measures
hashing, not the disk; reading 450 MB from a cold disk adds the disk's read time once.
Writes benchmarks/results/bench_fingerprint.json (or --out).
Run: .venv/bin/python benchmarks/bench_fingerprint.py [--images 118287 --annotations 860001]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tood.config import Config, to_dict  # noqa: E402
from tood.data import fingerprint  # noqa: E402

COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80
CHUNK = 2000  # images generated at a time
REPEATS = 5  # timings of the cached pass and the parts: the median (the machine is shared)


def _image_entries(ids: np.ndarray, rng: np.random.Generator) -> list[str]:
    heights, widths = rng.integers(240, 641, len(ids)), rng.integers(240, 641, len(ids))
    return [f'{{"license":{1 + i % 8},"file_name":"{i:012d}.jpg","coco_url":"http://images.cocodataset.org/train2017/{i:012d}.jpg",'
            f'"height":{h},"width":{w},"date_captured":"2013-11-14 16:28:13","flickr_url":"http://farm4.staticflickr.com/'
            f'{i % 9000}/{i:012d}_z.jpg","id":{i}}}' for i, h, w in zip(ids.tolist(), heights.tolist(), widths.tolist())]


def _annotation_entries(image_ids: np.ndarray, first_id: int, rng: np.random.Generator) -> list[str]:
    """One COCO instance each: a polygon of 8-44 points (like COCO's, ~360 bytes), its box and area."""
    m = len(image_ids)
    npts = rng.integers(8, 45, m)
    coords = [f"{v:.2f}" for v in rng.uniform(0, 640, 2 * int(npts.sum())).tolist()]
    boxes = rng.uniform(0, 320, (m, 4)).round(2).tolist()
    cats = rng.choice(COCO_CATEGORY_IDS, m).tolist()
    ends = np.cumsum(2 * npts).tolist()
    out, start = [], 0
    for k, (image_id, end, (x, y, w, h), cat) in enumerate(zip(image_ids.tolist(), ends, boxes, cats)):
        out.append(f'{{"segmentation":[[{",".join(coords[start:end])}]],"area":{w * h:.4f},"iscrowd":0,'
                   f'"image_id":{image_id},"bbox":[{x},{y},{w},{h}],"category_id":{cat},"id":{first_id + k}}}')
        start = end
    return out


def write_coco(ann: Path, images: Path, n_images: int, n_anns: int, seed: int) -> None:
    """A COCO instances file of ``n_images`` images and ``n_anns`` annotations, and one empty
    file per image under ``images``."""
    rng = np.random.default_rng(seed)
    per_image = rng.multinomial(n_anns, np.full(n_images, 1.0 / n_images))
    ann.parent.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    with ann.open("w") as f:
        f.write('{"info":{"description":"bench_fingerprint: COCO-shaped, random","version":"1.0","year":2017},'
                '"licenses":[' + ",".join(f'{{"url":"http://example.org/{i}","id":{i},"name":"license {i}"}}' for i in range(1, 9)) + '],"images":[')
        for start in range(0, n_images, CHUNK):
            ids = np.arange(start + 1, min(start + CHUNK, n_images) + 1)
            f.write(("," if start else "") + ",".join(_image_entries(ids, rng)))
            for i in ids.tolist():
                (images / f"{i:012d}.jpg").touch()
        f.write('],"annotations":[')
        next_id = 1
        for start in range(0, n_images, CHUNK):
            counts = per_image[start:start + CHUNK]
            image_ids = np.repeat(np.arange(start + 1, start + len(counts) + 1), counts)
            f.write(("," if start else "") + ",".join(_annotation_entries(image_ids, next_id, rng)))
            next_id += len(image_ids)
        f.write('],"categories":[' + ",".join(f'{{"supercategory":"s","id":{c},"name":"class{c}"}}' for c in COCO_CATEGORY_IDS) + "]}\n")


def _timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return value, round(time.perf_counter() - t0, 6)


def _median(fn, *args) -> float:
    return sorted(_timed(fn, *args)[1] for _ in range(REPEATS))[REPEATS // 2]


def run(args: argparse.Namespace, tmp: Path) -> dict:
    cfg = to_dict(Config())
    cfg["data"]["root"] = str(tmp / "coco")
    data = cfg["data"]
    root = Path(data["root"])
    _, gen_s = _timed(write_coco, root / data["train_ann"], root / data["train_images"], args.images, args.annotations, args.seed)
    write_coco(root / data["val_ann"], root / data["val_images"], args.val_images, args.val_annotations, args.seed + 1)
    os.environ[fingerprint.CACHE_ENV] = str(tmp / "cache/fingerprints.json")
    time.sleep(fingerprint.RACY_NS / 1e9)  # files younger than the racy window are never cached
    cold, cold_s = _timed(fingerprint.fingerprint_inputs, cfg)
    runs = [_timed(fingerprint.fingerprint_inputs, cfg) for _ in range(REPEATS)]
    assert all(r == cold for r, _ in runs)
    cached_s = sorted(t for _, t in runs)
    ann_cached_s = _median(fingerprint.DigestCache().digest, root / data["train_ann"])
    listing_s = _median(fingerprint.image_set_digest, root / data["train_images"])
    hash_s = _median(fingerprint.hash_bytes, root / data["train_ann"])
    train_bytes = (root / data["train_ann"]).stat().st_size
    return {
        "dataset": {"train_images": args.images, "train_annotations": args.annotations, "train_ann_bytes": train_bytes,
                    "val_images": args.val_images, "val_annotations": args.val_annotations,
                    "val_ann_bytes": (root / data["val_ann"]).stat().st_size,
                    "image_files": "one empty file per image (all of them)", "generate_train_s": gen_s, "seed": args.seed},
        "seconds": {"cold": cold_s, "cached_median": cached_s[REPEATS // 2], "cached_min": cached_s[0],
                    "cached_train_ann": ann_cached_s,
                    "train_images_listing": listing_s, "train_ann_hash": hash_s},
        "hash_MB_per_s": round(train_bytes / 1e6 / hash_s, 1),
        "cache_file_bytes": (tmp / "cache/fingerprints.json").stat().st_size,
        "note": "cold hashes from the page cache (the file was just written); a cold disk adds its read time once",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=118_287, help="train images (COCO train2017: 118287)")
    p.add_argument("--annotations", type=int, default=860_001, help="train annotations (COCO train2017: 860001)")
    p.add_argument("--val-images", type=int, default=5_000)
    p.add_argument("--val-annotations", type=int, default=36_781)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", help="folder for the generated dataset (default: the system's temp folder)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_fingerprint.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_fingerprint_") as tmp:
        result = run(args, Path(tmp))
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": len(os.sched_getaffinity(0)),
                         "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
