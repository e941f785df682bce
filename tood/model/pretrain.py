"""A synthetic stand-in for ImageNet pre-training of the proxy backbone.

The paper starts from an ImageNet-trained ResNet. Trained from scratch on the proxy, the small
backbone learns boxes and objectness first and drops colour from its deeper stages (a linear
probe at the cue reads the class from the stem and layer1, barely from C3 and at chance from the
FPN: ``probes/probe_cue.py``), after which the cue -> class mapping is learned late or
never: whether a 12-epoch run learns the classes at all depends on the seed. Pre-training on
object-centric crops of a *separate* synthetic split (a different generator seed; the
detector's images are never seen) gives the backbone what ImageNet gives the real one:
features that carry object identity.

The recipe: every annotated object of ``n_images`` generated images, cropped with 15% context,
resized to ``crop_size``, classified by its cue (cross-entropy over the classes, global average
pooling of the last stage, AdamW with a cosine schedule, random horizontal flips). The weights are
written with torchvision's keys (``fc`` dropped) to ``model.backbone.pretrained``, with a
``.json`` beside them recording the recipe and the held-out crop accuracy.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tood.cache import exclusive, require_recipe
from tood.config import Config, ConfigError, PretrainConfig
from tood.data.transforms import normalize
from tood.model.backbone import ResNet

CONTEXT = 0.15  # crop margin on each side, as a fraction of the box size


def object_crops(root: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every annotation of ``root/annotations/<split>.json`` as a normalised crop.

    Returns ``(N, 3, size, size)`` float32 (ImageNet mean/std) and ``(N,)`` labels 0..C-1
    (category ids in the order of the json's ``categories``).
    """
    data = json.loads((root / "annotations" / f"{split}.json").read_text())
    label_of = {c["id"]: i for i, c in enumerate(data["categories"])}
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    crops, labels = [], []
    for im in data["images"]:
        with Image.open(root / split / im["file_name"]) as f:
            image = f.convert("RGB")
        for a in by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            box = (x - CONTEXT * w, y - CONTEXT * h, x + (1 + CONTEXT) * w, y + (1 + CONTEXT) * h)
            crops.append(np.asarray(image.crop(box).resize((size, size), Image.BILINEAR)))
            labels.append(label_of[a["category_id"]])
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # (N, 3, S, S) uint8
    return normalize({"image": x})["image"], torch.tensor(labels)  # the detector's normalisation, batched


def _logits(backbone: ResNet, fc: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, S, S)`` crops -> ``(N, C)`` class logits: the classifier on the last stage, average-pooled."""
    return fc(backbone(x)[-1].mean((2, 3)))


def train_classifier(backbone: ResNet, x: torch.Tensor, y: torch.Tensor, num_classes: int, pre: PretrainConfig) -> torch.nn.Linear:
    """Train ``backbone`` (in place) and a linear classifier on ``(N, 3, S, S)`` crops; returns the classifier.

    Batch order and flips come from ``pre.seed``; the classifier's init from the global RNG."""
    gen = torch.Generator().manual_seed(pre.seed)
    fc = torch.nn.Linear(backbone.out_channels[-1], num_classes)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(fc.parameters())
    opt = torch.optim.AdamW(params, lr=pre.lr, weight_decay=0.05)
    per_epoch = max(len(y) // pre.batch_size, 1)
    total, step = pre.epochs * per_epoch, 0
    backbone.train()
    for _ in range(pre.epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(per_epoch):
            idx = order[i * pre.batch_size:(i + 1) * pre.batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            for g in opt.param_groups:
                g["lr"] = pre.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(_logits(backbone, fc, xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    backbone.eval()
    return fc


def accuracy(backbone: ResNet, fc: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the classifier on ``(N, 3, S, S)`` crops."""
    with torch.no_grad():
        pred = torch.cat([_logits(backbone, fc, xb).argmax(1) for xb in x.split(256)])
    return float((pred == y).float().mean())


def _crop_source(cfg: Config) -> tuple[dict, int]:
    """Generator knobs and image side of the crops' split: the detection proxy's (defaults on real data)."""
    s = cfg.data.synthetic
    return (s.knobs(), s.image_size) if s is not None else ({}, 256)


def recipe(cfg: Config) -> dict:
    """What the pre-trained file depends on: backbone shape, the crops' data and the training,
    as JSON values (tuples -> lists) so that it compares equal to the recipe read back from disk."""
    b = cfg.model.backbone
    knobs, size = _crop_source(cfg)
    return json.loads(json.dumps({
        "depth": b.depth, "base_width": b.base_width, "num_classes": cfg.model.num_classes,
        "image_size": size, "knobs": knobs, "pretrain": asdict(b.pretrain),
    }))


def ensure_pretrained_backbone(cfg: Config, progress: bool = False) -> Path | None:
    """Make ``model.backbone.pretrained`` by the synthetic pre-training if ``model.backbone.pretrain``
    asks for it and the file is absent; returns the file (``None`` when nothing is asked).

    The crops' split is generated beside the file (``<file stem>_data/``) with the detection
    data's knobs and the pre-training seed. A file lock makes concurrent trials build it once;
    an existing file made by another recipe is an error naming both (never silently reused).
    """
    from tood.data.synthetic import synthesize

    b = cfg.model.backbone
    if b.pretrain is None:
        return None
    if not b.pretrained:
        raise ConfigError("model.backbone.pretrain: needs model.backbone.pretrained (the file to write the weights to)")
    out = Path(b.pretrained)
    meta_path = out.with_suffix(".json")
    wanted = recipe(cfg)
    with exclusive(out.with_suffix(".lock")):
        if out.exists():
            found = json.loads(meta_path.read_text()).get("recipe") if meta_path.exists() else None
            require_recipe(out, "backbone was pre-trained", found, "model.backbone.pretrain", wanted,
                           f"delete {out} to pre-train again, or point model.backbone.pretrained elsewhere")
            return out
        t0 = time.perf_counter()
        pre, data = b.pretrain, out.parent / f"{out.stem}_data"
        knobs, size = _crop_source(cfg)
        synthesize(data, n_train=pre.n_images, n_val=max(pre.n_images // 10, 1), seed=pre.seed, image_size=(size, size),
                   num_classes=cfg.model.num_classes, **knobs)
        x, y = object_crops(data, "train", pre.crop_size)
        xv, yv = object_crops(data, "val", pre.crop_size)
        torch.manual_seed(pre.seed)  # the backbone's and the classifier's init, whatever ran before
        backbone = ResNet(depth=b.depth, base_width=b.base_width, frozen_stages=-1, norm_eval=False, out_indices=(3,))
        fc = train_classifier(backbone, x, y, cfg.model.num_classes, pre)
        acc = accuracy(backbone, fc, xv, yv)
        tmp = out.with_suffix(".tmp")
        torch.save(backbone.state_dict(), tmp)
        meta = {"recipe": wanted, "val_accuracy": acc, "n_train_crops": len(y), "n_val_crops": len(yv),
                "seconds": round(time.perf_counter() - t0, 1)}
        meta_path.write_text(json.dumps(meta, indent=2))
        tmp.replace(out)
        if progress:
            print(f"pre-trained {out}: {len(y)} crops, held-out accuracy {acc:.3f}, {meta['seconds']} s")
        return out
