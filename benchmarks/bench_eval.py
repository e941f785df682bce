"""COCO box evaluation seconds per backend: faster-coco-eval vs pycocotools.

Case: the generated COCO val-like case of tests/test_eval.py (`coco_sized_case`: 640x480
images, 0-15 GTs each over 80 classes, 100 detections per image, fixed seed) at 500 and 5,000
images. Times `tood.eval.evaluate_coco` end to end (the call training makes: building the
result COCO, matching, accumulating, summarizing) in wall and process CPU seconds, checks
that both backends give the same six metrics to 1e-9 and writes
benchmarks/results/bench_eval.json.
Run: .venv/bin/python benchmarks/bench_eval.py [--images 500 5000] [--repeats 1] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the generated case lives in tests/

from tests.test_eval import coco_sized_case  # noqa: E402
from tood.eval.coco_map import METRIC_NAMES, evaluate_coco  # noqa: E402

BACKENDS = ("faster", "pycocotools")
DETS_PER_IMAGE = 100


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "load_avg_1min_at_start": load, "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("faster-coco-eval", "pycocotools", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return all((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= 1e-9 for k in METRIC_NAMES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, nargs="+", default=[500, 5000])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per backend and size (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_eval.json")
    args = ap.parse_args()
    report = {"case": {"dets_per_image": DETS_PER_IMAGE, "classes": 80, "image_hw": [480, 640], "seed": args.seed},
              "machine": machine(), "versions": versions(), "repeats": args.repeats, "results": {}}
    for n in args.images:
        coco, dets = coco_sized_case(n, DETS_PER_IMAGE, seed=args.seed)
        row: dict = {"images": n, "detections": len(dets), "ground_truths": len(coco.dataset["annotations"])}
        metrics = {}
        for backend in BACKENDS:
            runs, cpu = [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                metrics[backend] = evaluate_coco(coco, dets, backend=backend)
                runs.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            row[f"{backend}_s"] = round(statistics.median(runs), 3)
            row[f"{backend}_runs_s"] = [round(t, 3) for t in runs]
            row[f"{backend}_cpu_s"] = round(statistics.median(cpu), 3)  # less sensitive than wall time to other jobs on the machine
            print(f"{n} images: {backend} {row[f'{backend}_s']:.2f} s wall, {row[f'{backend}_cpu_s']:.2f} s CPU", file=sys.stderr)
        if not same(metrics["faster"], metrics["pycocotools"]):
            raise SystemExit(f"benchmarks/bench_eval.py: {n} images: the backends disagree: {metrics}")
        row["speedup"] = round(row["pycocotools_s"] / row["faster_s"], 1)
        row["speedup_cpu"] = round(row["pycocotools_cpu_s"] / row["faster_cpu_s"], 1)
        row["metrics"] = {k: round(v, 4) for k, v in metrics["faster"].items()}
        report["results"][str(n)] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
