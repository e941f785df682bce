"""Forward + backward time of the detector on CPU/GPU; writes benchmarks/results/bench_model.json.

Cases: the paper's TOOD (ResNet-50 + FPN + T-head, 80 classes, one 800x1333 image padded to
800x1344) and the proxy model (the `proxy` profile of experiments/base.yaml, a batch of 8).
Run: .venv/bin/python benchmarks/bench_model.py [--threads 2] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tood.build import build_criterion, build_model
from tood.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def time_step(profile: str | None, batch: int, hw: tuple[int, int], device: str, repeats: int) -> dict:
    cfg = load_config(ROOT / "experiments/base.yaml", profile=profile)
    model = build_model(cfg.model, load_pretrained=False).to(device).train()  # timing needs no weights
    criterion = build_criterion(cfg)
    images = torch.randn(batch, 3, *hw, device=device)
    gt = torch.tensor([[[40.0, 60.0, 200.0, 180.0], [10.0, 10.0, 60.0, 90.0]]], device=device).expand(batch, -1, -1).contiguous()
    labels = torch.zeros(batch, 2, dtype=torch.long, device=device)
    mask = torch.ones(batch, 2, dtype=torch.bool, device=device)
    times = []
    for i in range(repeats + 1):  # the first call warms up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(images)
        loss = criterion(out, gt, labels, mask, epoch=cfg.criterion.warmup_epochs).total
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return {"profile": profile or "paper", "batch": batch, "input_hw": list(hw), "median_s": statistics.median(times), "all_s": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_model.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "cases": [
            time_step(None, 1, (800, 1344), args.device, args.repeats),
            time_step("proxy", 8, (160, 160), args.device, args.repeats),
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
