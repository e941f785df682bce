"""Where a trained proxy detector keeps the class: linear probes on its features.

For every val object of the synthetic proxy, the features of the stem, C2, C3 (backbone) and
P3, P4 (FPN) are read at the cell of the object's cue and of its box centre; a logistic
regression on 70% of the objects predicts the class of the other 30%. Chance is 1 / classes.
A run that never learned the classes shows chance from C3 on, even at the cue; a run that did
reads the class at the cue and at the centre. Writes probes/results/probe_cue.json.

Run: .venv/bin/python probes/probe_cue.py CONFIG CHECKPOINT [--profile proxy] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from tood.build import build_model
from tood.config import load_config
from tood.data.loaders import build_loader

ROOT = Path(__file__).resolve().parents[1]
TAPS = {"stem": ("backbone.conv1", 2), "C2": ("backbone.layer1", 4), "C3": ("backbone.layer2", 8)}


def at_cells(feat: torch.Tensor, xy: torch.Tensor, stride: int) -> torch.Tensor:
    """``(C, H, W)`` features at the cells holding the ``(N, 2)`` px points -> ``(N, C)``."""
    _, h, w = feat.shape
    ix = (xy[:, 0] / stride).long().clamp(0, w - 1)
    iy = (xy[:, 1] / stride).long().clamp(0, h - 1)
    return feat[:, iy, ix].T


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression on standardised ``(N, D)`` features (70/30 split)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    tr, te = order[: int(0.7 * len(y))], order[int(0.7 * len(y)):]
    x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(500):
        opt.zero_grad()
        F.cross_entropy(lin(x[tr]), y[tr]).backward()
        opt.step()
    with torch.no_grad():
        return float((lin(x[te]).argmax(1) == y[te]).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--profile")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=str(ROOT / "probes/results/probe_cue.json"))
    args = p.parse_args(argv)
    cfg = load_config(args.config, profile=args.profile, overrides=args.overrides)
    model = build_model(cfg.model, load_pretrained=False)
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["model"])
    model.eval()
    caps: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name, (path, _) in TAPS.items():
        modules[path].register_forward_hook(lambda m, i, o, name=name: caps.__setitem__(name, o))
    model.head.register_forward_hook(lambda m, i, o: caps.update(P3=i[0][0], P4=i[0][1]))
    strides = {**{k: s for k, (_, s) in TAPS.items()}, "P3": 8, "P4": 16}

    loader = build_loader(cfg, train=False)
    ann = json.loads((Path(cfg.data.root) / cfg.data.val_ann).read_text())
    cats = {c["id"]: i for i, c in enumerate(ann["categories"])}
    per_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    feats: dict[str, list[torch.Tensor]] = {f"{where}_{k}": [] for where in ("cue", "centre") for k in strides}
    labels = []
    for batch in loader:
        with torch.no_grad():
            model(batch.images)
        for b in range(batch.images.shape[0]):
            objs = sorted(per_image.get(int(batch.image_ids[b]), []), key=lambda a: a["id"])
            if not objs:
                continue
            scale = batch.scale_factors[b].repeat(2)  # (4,) original px -> input px
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in objs]) * scale
            cue = torch.tensor([a["cue"][:2] for a in objs]) * scale[:2]
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2
            for k, s in strides.items():
                feats[f"cue_{k}"].append(at_cells(caps[k][b], cue, s))
                feats[f"centre_{k}"].append(at_cells(caps[k][b], centre, s))
            labels.append(torch.tensor([cats[a["category_id"]] for a in objs]))
    y = torch.cat(labels)
    result = {"checkpoint": args.checkpoint, "objects": len(y), "chance": 1 / len(ann["categories"]),
              "probe_accuracy": {k: round(probe_accuracy(torch.cat(v), y), 3) for k, v in feats.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
