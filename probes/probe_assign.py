"""How many positives each assignment scheme gives an object of the proxy, and on which levels.

    python probes/probe_assign.py [--batches 10] [--set criterion.center_scale_factor=0.25]

For every scheme of Tables 1 and 2 that assigns from the priors alone (ATSS, max-IoU, centre
sampling, FoveaBox; TAL needs a trained model's predictions and starts from the ATSS
warm-up), over the first ``--batches`` training batches of the proxy profile: positives per
object, the share of objects with none, the share of positives whose prior point lies inside
their GT (an anchor-free head regresses l, t, r, b >= 0 from that point, so it cannot fit a GT
that does not hold it) and the share of positives on each FPN level.
Writes probes/results/probe_assign.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestration.grid import expand_grid  # noqa: E402
from tood.build import build_criterion  # noqa: E402
from tood.config import build_config, parse_override  # noqa: E402
from tood.data.loaders import build_loader  # noqa: E402
from tood.priors import make_priors  # noqa: E402

GRIDS = ("experiments/table2_assign.yaml", "experiments/table1_head.yaml")


def schemes(overrides: dict) -> dict[str, dict]:
    """One resolved config per distinct prior-only assignment (first row label that uses it)."""
    out: dict[str, dict] = {}
    for grid in GRIDS:
        for spec in expand_grid(ROOT / grid, seeds=[0], overrides=overrides):
            c = spec.config["criterion"]
            if c["assigner"] != "tal":
                out.setdefault(c["assigner"], {"row": spec.row_label, "config": spec.config})
    return out


def probe(config: dict, batches: list, name: str) -> dict:
    cfg = build_config(config, name)
    strides = tuple(cfg.model.strides)
    h, w = cfg.data.img_scale
    priors = make_priors([(-(-h // s), -(-w // s)) for s in strides], strides)
    assigner = build_criterion(cfg).main.assigner
    per_gt, levels, inside = [], torch.zeros(len(strides)), []
    for b in batches:
        n_img, n_pri = b.gt_boxes.shape[0], priors.num_priors
        boxes = priors.anchors[None].expand(n_img, n_pri, 4)  # prior-only schemes do not read them
        scores = torch.full((n_img, n_pri, cfg.model.num_classes), 0.5)
        res = assigner(priors, scores, boxes, b.gt_boxes, b.gt_labels, b.gt_mask)
        hits = (res.gt_index[:, :, None] == torch.arange(b.gt_boxes.shape[1])) & res.fg_mask[:, :, None]  # (B, A, G)
        per_gt += hits.sum(1)[b.gt_mask].tolist()
        pts, tgt = priors.points.expand(n_img, -1, -1)[res.fg_mask], res.boxes[res.fg_mask]  # (P, 2), (P, 4)
        inside += ((pts > tgt[:, :2]) & (pts < tgt[:, 2:])).all(-1).tolist()
        fg = res.fg_mask.sum(0).float()  # (A,)
        levels += torch.stack([fg[sl].sum() for sl in priors.level_slices()])
    n = len(per_gt)
    return {"objects": n, "positives_per_object": sum(per_gt) / n, "objects_without_positives": sum(v == 0 for v in per_gt) / n,
            "positives_centre_inside_gt": sum(inside) / max(len(inside), 1),
            "positives_by_level": {f"P{3 + i}": round(float(v / levels.sum().clamp(min=1)), 3) for i, v in enumerate(levels)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(parse_override(o) for o in args.overrides)
    found = schemes(overrides)
    first = build_config(next(iter(found.values()))["config"], "data")
    batches = []
    for i, b in enumerate(build_loader(first, train=True)):
        if i == args.batches:
            break
        batches.append(b)
    out = {"overrides": overrides, "batches": len(batches),
           "schemes": {a: {"row": s["row"], **probe(s["config"], batches, a)} for a, s in found.items()}}
    path = ROOT / "probes/results/probe_assign.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
