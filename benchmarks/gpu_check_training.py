"""Steps 2 and 3 of benchmarks/gpu_check.py, training and evaluation speed: seconds per iteration,
peak memory and syncs of tood/engine.py's training step on synthetic tensors, in the TAL phase
and the ATSS warm-up; seconds of tood.eval.coco_map.evaluate_coco on a generated COCO-sized case.

Imported by benchmarks/gpu_check.py, which puts the project and benchmarks/ on sys.path.
"""
from __future__ import annotations

import time

import torch
from bench_syncs import count_syncs
from gpu_check_setup import ROOT, SIZES

from tood.config import load_config
from tood.data.transforms import Batch

SMALL_MODEL = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.neck_channels=16",
               "model.head.feat_channels=16", "model.head.gn_groups=4"]


def synthetic_batch(n: int, hw: tuple[int, int], num_classes: int, seed: int = 0) -> Batch:
    """``n`` random images ``hw`` (h, w) padded to multiples of 32 and 4-30 random GT boxes each (xyxy px)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    gmax = 30
    xy = torch.rand(n, gmax, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(n, gmax, 2, generator=g).pow(2) * min(h, w) / 2 + 8
    gt = torch.cat([(xy - wh / 2).clamp(min=0), torch.minimum(xy + wh / 2, torch.tensor([w, h]))], -1)
    count = torch.randint(4, gmax + 1, (n, 1), generator=g)
    size = torch.tensor([[h, w]] * n)
    return Batch(images=torch.randn(n, 3, -(-h // 32) * 32, -(-w // 32) * 32, generator=g), gt_boxes=gt,
                 gt_labels=torch.randint(0, num_classes, (n, gmax), generator=g), gt_mask=torch.arange(gmax)[None] < count,
                 image_ids=list(range(1, n + 1)), scale_factors=torch.ones(n, 2), img_sizes=size, orig_sizes=size,
                 flipped=torch.zeros(n, dtype=torch.bool))


def train_check(device: str, dry: bool, deadline: float) -> dict:
    """Seconds per iteration, peak memory and syncs of tood.engine's training step, per phase."""
    from tood.engine import _set_up, _step

    overrides = ["train.batch_size=2", f"train.device={device}", "model.backbone.pretrained=null"] + (SMALL_MODEL if dry else [])
    cfg = load_config(ROOT / "experiments/base.yaml", profile="coco", overrides=overrides)
    s = _set_up(cfg, progress=False)
    s.model.train()
    cuda = device == "cuda"
    batch = synthetic_batch(cfg.train.batch_size, SIZES["hw"][dry], cfg.model.num_classes)
    if cuda:
        batch = batch.pin_memory()  # as the training DataLoader hands batches over; the step copies them
    warm, timed = SIZES["iters"][dry]
    out = {"profile": "coco", "overrides": overrides, "batch": cfg.train.batch_size, "amp": cfg.train.amp,
           "input_hw": list(batch.images.shape[-2:]), "phases": {}}
    it = 0
    for phase, epoch in (("tal", cfg.criterion.warmup_epochs), ("warmup", 0)):
        for _ in range(warm):
            _step(s, cfg, batch, epoch, it)
            it += 1
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        while len(times) < timed and (not times or time.monotonic() + 2 * times[-1] < deadline):
            t0 = time.perf_counter()
            _step(s, cfg, batch, epoch, it)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            it += 1
        row = {"epoch": epoch, "iterations": len(times), "s_per_iter": sum(times) / len(times), "all_s": times,
               "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
               "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None}
        if cuda:
            torch.cuda.synchronize()
        row["syncs"] = count_syncs(lambda: _step(s, cfg, batch, epoch, it), cuda=cuda)
        it += 1
        out["phases"][phase] = row
    return out


def eval_check(dry: bool) -> dict:
    from tests.test_eval import coco_sized_case
    from tood.eval.coco_map import evaluate_coco, resolve_backend

    n = SIZES["eval_images"][dry]
    coco, dets = coco_sized_case(n, 100, seed=0)
    t0 = time.perf_counter()
    metrics = evaluate_coco(coco, dets)
    return {"images": n, "detections": len(dets), "backend": resolve_backend("auto"), "seconds": time.perf_counter() - t0,
            "AP": metrics["AP"]}
