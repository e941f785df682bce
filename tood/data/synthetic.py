"""Synthetic COCO-format proxy dataset with the task misalignment built in (TOOD_METHOD.md s.5).

Every object is a body -- a superellipse (ellipse, rounded rectangle or rectangle) of random
size, aspect ratio and orientation, coloured from ONE low-saturation distribution shared by
all classes, with a darker rim -- carrying a small saturated cue (disc or square) near one
randomly chosen end of its long axis. The cue's hue decides the class; the box is the body's
full extent (amodal, pixel-exact). So the evidence for the class lies off-centre while the box
needs the whole body. Also: elongated bodies at several orientations; crowding (objects placed
touching/overlapping an earlier one, of the same class with ``same_class_prob``, parallel to
it half the time); scales spanning P3-P6 of a 256 px image; a textured background with
clutter lines; distractors that are not annotated: cue-less bodies and loose cue-coloured
blobs. Occlusion is bounded: no object covers another's cue and each keeps ``min_visible``
of its body visible. Objects lie wholly inside their image.

Knobs (keyword arguments of :func:`synthesize`; ``--kebab-case`` options of ``tood data synth``):
  num_classes      5          classes (2-8); cue hues evenly spaced on the colour wheel
  objects          (2, 10)    objects per image, inclusive range (fewer if placement fails)
  size             (12, 150)  long side in px, log-uniform (capped at 0.9 x the image side)
  aspect_max       5.0        body aspect (long/short) log-uniform in [1, aspect_max]
  min_short        6          px, least short side (caps the aspect of small objects)
  rotate_prob      0.3        fraction of bodies at a random angle (others horizontal/vertical)
  crowd_prob       0.5        chance an object is placed touching/overlapping an earlier one
  same_class_prob  0.5        chance a crowding object takes its neighbour's class
  cue_size         0.5        cue diameter / min(short side, long side / 2), at least 3 px
  cue_jitter       12.0       +- degrees of hue jitter of a cue around its class hue
  distractors      3          at most this many cue-less bodies AND loose cue blobs per image
  clutter          8          thin background clutter lines per image
  noise            8.0        std of Gaussian pixel noise (0-255 scale)
  min_visible      0.6        least visible fraction of each object's body
The defaults are starting points to tune (aim: a small detector trained ~5 CPU minutes
lands at 30-60 AP, and T-head + TAL separates from parallel head + ATSS).

Output: out_dir/{train,val}/NNNNNN.png, out_dir/annotations/{train,val}.json. The json
"info" records seed, image size, counts and every knob. Annotations carry COCO fields
(bbox [x, y, w, h], area = visible body pixels, segmentation = body polygon) plus "angle"
(degrees), "aspect" (long/short) and "cue" [x, y, diameter] px. Image i of split s is drawn
from numpy PCG64 seeded by (seed, s, i): same seed -> same json bytes and pixels.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val")
HUE_NAMES = ["red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet", "magenta", "pink"]


@dataclass(frozen=True)
class Knobs:
    """Generator knobs; see the module docstring for meanings and units."""

    num_classes: int = 5
    objects: tuple[int, int] = (2, 10)
    size: tuple[int, int] = (12, 150)
    aspect_max: float = 5.0
    min_short: int = 6
    rotate_prob: float = 0.3
    crowd_prob: float = 0.5
    same_class_prob: float = 0.5
    cue_size: float = 0.5
    cue_jitter: float = 12.0
    distractors: int = 3
    clutter: int = 8
    noise: float = 8.0
    min_visible: float = 0.6

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= 8:
            raise ValueError(f"num_classes: {self.num_classes} (expected 2..8)")
        for name in ("objects", "size"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: {(lo, hi)} (expected a range [min, max] with 0 <= min <= max)")
        if self.aspect_max < 1 or not 0 < self.cue_size < 1 or not 0 <= self.min_visible <= 1:
            raise ValueError(f"aspect_max {self.aspect_max}, cue_size {self.cue_size}, min_visible {self.min_visible} "
                             "(expected aspect_max >= 1, 0 < cue_size < 1, 0 <= min_visible <= 1)")


class SynthPaths(NamedTuple):
    root: Path
    train_images: Path
    train_ann: Path
    val_images: Path
    val_ann: Path


def class_hues(num_classes: int) -> np.ndarray:
    """Cue hue of each class in [0, 1), evenly spaced: (C,)."""
    return np.arange(num_classes) / num_classes


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def _outline(a: float, b: float, n: float, k: int) -> np.ndarray:
    """(k, 2) polygon (u, v) of a superellipse with half-axes a >= b (n = inf: rectangle)."""
    if np.isinf(n):
        return np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([a * np.sign(c) * np.abs(c) ** (2 / n), b * np.sign(s) * np.abs(s) ** (2 / n)], 1)


def _place(uv: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    """Rotate (k, 2) local (u, v) points by ``angle`` (rad) and move them to (cx, cy) -> (k, 2) xy px."""
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    return uv @ rot + (cx, cy)


def _raster(poly: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """(h, w) bool mask of ``poly`` (k, 2) xy px inside the crop at (x0, y0)."""
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([(float(x) - x0, float(y) - y0) for x, y in poly], fill=1)
    return np.asarray(im, dtype=bool)


def _body(rng: np.random.Generator, k: Knobs, max_side: float) -> dict:
    """Sample a body's geometry and colour (class-independent) at the origin."""
    long = float(np.exp(rng.uniform(np.log(k.size[0]), np.log(min(k.size[1], max_side)))))
    aspect = float(np.exp(rng.uniform(0, np.log(max(k.aspect_max, 1.0)))))
    aspect = max(1.0, min(aspect, long / k.min_short))
    n = float(rng.choice([2.0, 4.0, np.inf]))
    if rng.random() < k.rotate_prob:
        angle = float(rng.uniform(0, np.pi))
    else:
        angle = float(rng.integers(2)) * np.pi / 2
    a, b = long / 2, long / aspect / 2
    return dict(a=a, b=b, n=n, angle=angle, aspect=aspect, uv=_outline(a, b, n, 48),
                colour=_hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.25, 0.95)))


def _cue(rng: np.random.Generator, k: Knobs, body: dict, hue: float) -> dict:
    """A cue near a random end of ``body``'s long axis, wholly inside the body (local u, v)."""
    a, b, n = body["a"], body["b"], body["n"]
    r = max(k.cue_size * min(b, a / 2), 1.5)  # round bodies get smaller cues, kept off-centre
    # Largest |u| where the body's half-width still exceeds r plus a small margin.
    q = min((r + 0.15 * b) / b, 1.0)
    u = (a * (1 - q**n) ** (1 / n) if np.isfinite(n) else a - 0.15 * b) - r
    u = max(u, 0.0) * (1 if rng.random() < 0.5 else -1)
    shape = _outline(r, r, 2.0, 16) if rng.random() < 0.5 else _outline(r, r, np.inf, 4)
    colour = _hsv(hue + rng.uniform(-k.cue_jitter, k.cue_jitter) / 360, rng.uniform(0.75, 1), rng.uniform(0.75, 1))
    return dict(uv=shape + (u, 0.0), u=u, d=2 * r, colour=colour)


def _background(rng: np.random.Generator, h: int, w: int, k: Knobs) -> np.ndarray:
    """Textured background: low- and mid-frequency colour noise plus clutter lines -> (h, w, 3) float32."""
    base = rng.uniform(70, 190) + rng.normal(0, 12, 3)
    img = np.zeros((h, w, 3), np.float32) + base.astype(np.float32)
    # (cells, luminance amplitude, colour amplitude): a mostly grey texture, faintly tinted.
    for cells, lum, col in [(4, 30.0, 8.0), (max(h // 8, 2), 12.0, 4.0)]:
        noise = rng.normal(0, lum, (cells, cells, 1)) + rng.normal(0, col, (cells, cells, 3))
        grid = np.clip(128 + noise, 0, 255).astype(np.uint8)
        img += np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32) - 128
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(k.clutter):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        t, length = rng.uniform(0, np.pi), rng.uniform(10, 80)
        draw.line([(x, y), (x + length * np.cos(t), y + length * np.sin(t))],
                  fill=tuple(int(c) for c in _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.9))),
                  width=int(rng.integers(1, 3)))
    return np.asarray(pil, np.float32).copy()


def _paint(img: np.ndarray, mask: np.ndarray, x0: int, y0: int, colour: np.ndarray, rim: bool) -> None:
    """Fill ``mask`` (h, w) at (x0, y0) of ``img`` (H, W, 3) in place, with a darker 1 px rim."""
    crop = img[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
    crop[mask] = colour
    if rim:
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        crop[mask & ~inner] = colour * 0.55


def _fit(poly: np.ndarray, h: int, w: int) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(poly.min(0)).astype(int)
    x1, y1 = np.ceil(poly.max(0)).astype(int) + 1
    return None if x0 < 0 or y0 < 0 or x1 > w or y1 > h else (int(x0), int(y0), int(x1), int(y1))


def _fitting_centre(rng: np.random.Generator, uv: np.ndarray, angle: float, h: int, w: int) -> tuple[float, float]:
    """A uniform centre (x, y) px at which the shape ``uv`` rotated by ``angle`` lies inside the image."""
    ex, ey = np.abs(_place(uv, angle, 0, 0)).max(0)  # half extents
    return rng.uniform(ex, max(w - 1 - ex, ex)), rng.uniform(ey, max(h - 1 - ey, ey))


def _propose(rng: np.random.Generator, k: Knobs, objs: list[dict], h: int, w: int) -> tuple[dict, int, float, float]:
    """A candidate object: (body, label, centre x, centre y), crowding an earlier one with ``crowd_prob``."""
    body = _body(rng, k, 0.9 * min(h, w))
    label = int(rng.integers(k.num_classes))
    if not objs or rng.random() >= k.crowd_prob:
        return body, label, *_fitting_centre(rng, body["uv"], body["angle"], h, w)
    near = objs[int(rng.integers(len(objs)))]
    if rng.random() < k.same_class_prob:
        label = near["label"]
    else:
        label = (near["label"] + 1 + int(rng.integers(k.num_classes - 1))) % k.num_classes
    if rng.random() < 0.5:
        body["angle"] = near["angle"]  # parallel neighbours: the hardest case for NMS
    # Centre distance along a random direction phi: a fraction of the two boxes' summed
    # half extents in that direction, so that the boxes touch or overlap.
    ext = np.abs(_place(body["uv"], body["angle"], 0, 0)).max(0)  # (2,) half extents x, y
    x0, y0, x1, y1 = near["box"]
    phi = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0.6, 1.0) * np.abs([np.cos(phi), np.sin(phi)]) @ (ext + ((x1 - x0) / 2, (y1 - y0) / 2))
    return body, label, (x0 + x1) / 2 + dist * np.cos(phi), (y0 + y1) / 2 + dist * np.sin(phi)


def render_image(rng: np.random.Generator, h: int, w: int, k: Knobs) -> tuple[np.ndarray, list[dict]]:
    """One image (h, w, 3) uint8 and its objects (label, box xyxy px, area, polygon, cue, ...)."""
    img = _background(rng, h, w, k)
    owner = np.zeros((h, w), np.int32)  # 1 + index of the object drawn on top, 0 = none
    cue_px = np.zeros((h, w), bool)
    hues = class_hues(k.num_classes)
    objs: list[dict] = []
    visible: list[int] = []
    for _ in range(int(rng.integers(k.objects[0], k.objects[1] + 1))):
        for _try in range(30):
            body, label, cx, cy = _propose(rng, k, objs, h, w)
            poly = _place(body["uv"], body["angle"], cx, cy)
            crop = _fit(poly, h, w)
            if crop is None:
                continue
            x0, y0, x1, y1 = crop
            mask = _raster(poly, x0, y0, x1 - x0, y1 - y0)
            win = (slice(y0, y1), slice(x0, x1))
            if not mask.any() or cue_px[win][mask].any():
                continue
            covered = np.bincount(owner[win][mask], minlength=len(objs) + 1)[1:]
            if any(v - c < k.min_visible * o["body_px"] for v, c, o in zip(visible, covered, objs) if c):
                continue
            cue = _cue(rng, k, body, hues[label])
            cue_mask = _raster(_place(cue["uv"], body["angle"], cx, cy), x0, y0, x1 - x0, y1 - y0) & mask
            visible = [v - c for v, c in zip(visible, covered)] + [int(mask.sum())]
            owner[win][mask] = len(objs) + 1
            cue_px[win] |= cue_mask
            _paint(img, mask, x0, y0, body["colour"], rim=True)
            img[win][cue_mask] = cue["colour"]
            ys, xs = np.nonzero(mask)
            cue_xy = _place(np.array([[cue["u"], 0.0]]), body["angle"], cx, cy)[0]
            objs.append(dict(label=label, angle=body["angle"], aspect=body["aspect"], body_px=int(mask.sum()),
                             box=(x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1),
                             poly=poly, cue=(float(cue_xy[0]), float(cue_xy[1]), cue["d"])))
            break
    for o, v in zip(objs, visible):
        o["area"] = v
    _distract(rng, img, k, objs, hues)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(k.noise)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), objs


def _distract(rng: np.random.Generator, img: np.ndarray, k: Knobs, objs: list[dict], hues: np.ndarray) -> None:
    """Cue-less bodies and loose cue blobs, kept 2 px clear of every object box."""
    h, w = img.shape[:2]
    busy = np.zeros((h, w), bool)
    for o in objs:
        x0, y0, x1, y1 = o["box"]
        busy[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True
    n_bodies, n_blobs = rng.integers(0, k.distractors + 1, 2)
    for i in range(int(n_bodies + n_blobs)):
        for _try in range(10):
            body = _body(rng, k, 0.9 * min(h, w))
            if i >= n_bodies:  # a loose cue: a cue-sized blob in a class colour
                cue = _cue(rng, k, body, hues[int(rng.integers(k.num_classes))])
                uv, colour = cue["uv"] - (cue["u"], 0.0), cue["colour"]
            else:
                uv, colour = body["uv"], body["colour"]
            poly = _place(uv, body["angle"], *_fitting_centre(rng, uv, body["angle"], h, w))
            crop = _fit(poly, h, w)
            if crop is None:
                continue
            x0, y0, x1, y1 = crop
            mask = _raster(poly, x0, y0, x1 - x0, y1 - y0)
            if busy[y0:y1, x0:x1][mask].any():
                continue
            busy[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = True  # no blob touching a cue-less body
            _paint(img, mask, x0, y0, colour, rim=i < n_bodies)
            break


def _annotations(objs: list[dict], image_id: int, first_id: int) -> list[dict]:
    out = []
    for j, o in enumerate(objs):
        x0, y0, x1, y1 = (int(v) for v in o["box"])
        out.append({
            "id": first_id + j, "image_id": image_id, "category_id": o["label"] + 1,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(o["area"]), "iscrowd": 0,
            "segmentation": [[round(float(v), 2) for v in o["poly"].reshape(-1)]],
            "angle": round(float(np.degrees(o["angle"])), 3), "aspect": round(float(o["aspect"]), 4),
            "cue": [round(v, 3) for v in o["cue"]],
        })
    return out


def synthesize(out_dir: str | Path, n_train: int, n_val: int, seed: int,
               image_size: int | tuple[int, int] = 256, **knobs) -> SynthPaths:
    """Write the proxy dataset (layout and knobs in the module docstring); returns its paths."""
    names = {f.name for f in fields(Knobs)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise TypeError(f"synthesize: unknown knob(s) {unknown} (expected some of: {', '.join(sorted(names))})")
    k = Knobs(**{n: tuple(v) if isinstance(v, list) else v for n, v in knobs.items()})
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    root = Path(out_dir)
    paths = SynthPaths(root, root / "train", root / "annotations" / "train.json", root / "val", root / "annotations" / "val.json")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": c + 1, "name": f"cue_{HUE_NAMES[round(hue * 12) % 12]}", "supercategory": "body"}
                  for c, hue in enumerate(class_hues(k.num_classes))]
    for s, (split, n, img_dir, ann_file) in enumerate(zip(SPLITS, (n_train, n_val), paths[1::2], paths[2::2])):
        img_dir.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            pixels, objs = render_image(np.random.default_rng([seed, s, i]), h, w, k)
            name = f"{i:06d}.png"
            Image.fromarray(pixels).save(img_dir / name, compress_level=1)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
            anns += _annotations(objs, i + 1, len(anns) + 1)
        info = {"description": "tood synthetic proxy (tood.data.synthetic)", "split": split, "seed": seed,
                "image_size": [h, w], "n_train": n_train, "n_val": n_val, "knobs": asdict(k)}
        data = {"info": info, "licenses": [], "images": images, "annotations": anns, "categories": categories}
        ann_file.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``tood data synth --out DIR --train N --val M --seed S [--knob value ...]``."""
    doc = __doc__ or ""  # empty under python -OO
    knob_table = doc[doc.find("Knobs ("):doc.find("The defaults are")] if "Knobs (" in doc else None
    p = argparse.ArgumentParser(prog="tood data synth", description="Write the synthetic COCO-format proxy dataset.",
                                epilog=knob_table, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=600, help="training images (default 600)")
    p.add_argument("--val", type=int, default=150, help="validation images (default 150)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--image-size", type=int, nargs="+", default=[256], metavar="PX", help="side, or height width (default 256)")
    for f in fields(Knobs):
        default = f.default
        kind = type(default[0]) if isinstance(default, tuple) else type(default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, nargs=2 if isinstance(default, tuple) else None,
                       default=default, metavar=("MIN", "MAX") if isinstance(default, tuple) else "X", help=f"default {default}")
    args = p.parse_args(argv)
    knobs = {f.name: getattr(args, f.name) for f in fields(Knobs)}
    size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size[:2])
    t0 = time.perf_counter()
    paths = synthesize(args.out, args.train, args.val, args.seed, size, **knobs)
    print(f"wrote {args.train} + {args.val} images to {paths.root} in {time.perf_counter() - t0:.1f} s "
          f"({paths.train_ann}, {paths.val_ann})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
