"""Batched assigners vs the per-image, per-GT reference loops of tests/reference_assigners.py.

Case: B = 8 images of 1333x800 (padded 800x1344: 22400 priors on P3-P7), 100 GTs each
(log-uniform sizes 8-400 px), C = 80. Predicted boxes sit on their prior point with each side
0.5-6 strides away, as a head after warm-up predicts; scores are uniform in [0, 1].
Checks that both give the same assignment, then times them (median of --repeats runs after
one warm-up call) and writes benchmarks/results/bench_assign.json.
Run: .venv/bin/python benchmarks/bench_assign.py [--threads 2] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the references live in tests/

from tests.reference_assigners import atss_reference, center_sampling_reference, max_iou_reference, tal_reference  # noqa: E402
from tood.assigners import ATSSAssigner, CenterSamplingAssigner, MaxIoUAssigner, TaskAlignedAssigner  # noqa: E402
from tood.priors import make_priors  # noqa: E402

B, G, C = 8, 100, 80
H, W = 800, 1344
STRIDES = (8, 16, 32, 64, 128)


def make_inputs(device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    priors = make_priors([(math.ceil(H / s), math.ceil(W / s)) for s in STRIDES], strides=STRIDES)
    a = priors.num_priors
    size = torch.exp(torch.empty(B, G, 2).uniform_(math.log(8), math.log(400), generator=gen))  # (B, G, 2) w, h
    ctr = torch.rand(B, G, 2, generator=gen) * torch.tensor([W, H])
    gt = torch.cat([ctr - size / 2, ctr + size / 2], -1)
    gt = torch.minimum(gt.clamp(min=0), torch.tensor([W, H, W, H], dtype=torch.float32))  # (B, G, 4) inside the image
    labels = torch.randint(0, C, (B, G), generator=gen)
    mask = torch.ones(B, G, dtype=torch.bool)
    ltrb = (0.5 + 5.5 * torch.rand(B, a, 4, generator=gen)) * priors.strides[None, :, None]  # (B, A, 4)
    pred_boxes = torch.cat([priors.points - ltrb[..., :2], priors.points + ltrb[..., 2:]], -1)
    pred_scores = torch.rand(B, a, C, generator=gen)
    priors = type(priors)(priors.points.to(device), priors.anchors.to(device), priors.strides.to(device), priors.num_per_level)
    return priors, pred_scores.to(device), pred_boxes.to(device), gt.to(device), labels.to(device), mask.to(device)


def timed(fn, repeats: int, device: str) -> tuple[list[float], object]:
    out, times = None, []
    for i in range(repeats + 1):  # the first call warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_assign.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    priors, scores, boxes, gt, labels, mask = make_inputs(args.device)
    cases = {
        "task_aligned": (TaskAlignedAssigner(C), lambda i: tal_reference(priors, scores[i], boxes[i], gt[i], labels[i], C)),
        "atss": (ATSSAssigner(C), lambda i: atss_reference(priors, boxes[i], gt[i], labels[i], C)),
        "max_iou": (MaxIoUAssigner(C), lambda i: max_iou_reference(priors, boxes[i], gt[i], labels[i], C)),
        "center_sampling": (CenterSamplingAssigner(C), lambda i: center_sampling_reference(priors, boxes[i], gt[i], labels[i], C)),
    }
    results = {}
    for name, (assigner, reference) in cases.items():
        t_batched, res = timed(lambda: assigner(priors, scores, boxes, gt, labels, mask), args.repeats, args.device)
        t_ref, refs = timed(lambda: [reference(i) for i in range(B)], args.repeats, args.device)
        same = all(torch.equal(res.fg_mask[i], r[3]) and torch.equal(res.gt_index[i], r[4]) for i, r in enumerate(refs))
        if not same:
            raise SystemExit(f"benchmarks/bench_assign.py: {name}: batched and reference assignments differ")
        med_b, med_r = statistics.median(t_batched), statistics.median(t_ref)
        results[name] = {
            "batched_s": round(med_b, 4),
            "reference_s": round(med_r, 4),
            "speedup": round(med_r / med_b, 1),
            "batched_runs_s": [round(t, 4) for t in t_batched],
            "reference_runs_s": [round(t, 4) for t in t_ref],
            "positives": int(res.fg_mask.sum()),
        }
    report = {
        "case": {"images": B, "gts_per_image": G, "classes": C, "input_hw": [H, W], "priors": priors.num_priors},
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
