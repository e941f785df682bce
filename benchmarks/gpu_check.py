"""One GPU check in one run (<= 10 minutes on one GPU): CUDA equals CPU, R-50 training speed, memory and
syncs, evaluation seconds, and the proxy Table 6 packed on the GPU. Writes one JSON report.

Steps, each bounded by its share of ``--budget`` seconds; a step that fails or runs out of time
records its error and the next one still runs (the report is rewritten after every step):
1. equality: TAL and ATSS assignment, batched NMS, deformable sampling (values and gradients),
   the losses and the whole criterion in both phases, on the device against the CPU on the same
   seeded random inputs. Assignments and NMS keeps must be identical; floats must agree within
   ``TOLERANCE``.
2. train: the `coco` profile of experiments/base.yaml (ResNet-50, T-head + TAL, bf16 AMP) at
   1333x800 (800x1344 padded), batch 2, synthetic tensors, through the training step of
   tood/engine.py: seconds per iteration after warm-up, peak memory, and the syncs of one step
   (benchmarks/bench_syncs.py's count, with the CUDA runtime's synchronize events), in the TAL
   phase and the ATSS warm-up.
3. eval: COCO box AP of 500 generated images x 100 detections (tests/test_eval.py's
   coco_sized_case) through tood.eval.coco_map.evaluate_coco, the evaluator training uses.
4. launch: the proxy Table 6 at 16 epochs, one seed, packed on the GPU with fractional
   ``--gpus-per-trial``, as a subprocess with what is left of the budget: wall time, whether it
   finished, GPU utilisation sampled with nvidia-smi.
``--dry-run`` runs the same code on the CPU at tiny sizes ("cuda" is the CPU again, a small
backbone, 128x160 images, 20 images to evaluate) and checks the launch command (grid file, flags,
trials) without launching it; tests/test_gpu_check.py runs it.
The eval step needs the dev extras (its generated case lives in tests/test_eval.py, which imports pytest).
The steps live beside this script: gpu_check_equality.py (1), gpu_check_training.py (2, 3) and
gpu_check_launch.py (4); gpu_check_setup.py holds the input sizes and the alarm that bounds a step.
Run: python benchmarks/gpu_check.py [--dry-run] [--out PATH] [--budget 540]
     on a lent GPU machine: python benchmarks/gpu_check.py --out $OUT/gpu_check.json  (a 600 s command limit;
     the launch's log lands beside the report as gpu_check.launch.log)
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the steps beside this script

from gpu_check_equality import equality_checks  # noqa: E402
from gpu_check_launch import launch_check  # noqa: E402
from gpu_check_setup import ROOT, StepTimeout, time_limit  # noqa: E402
from gpu_check_training import eval_check, train_check  # noqa: E402

SHARES = {"equality": 0.12, "train": 0.25, "eval": 0.08}  # of --budget; the launch gets what is left


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; the launch is checked, not run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_check.json")
    p.add_argument("--budget", type=float, default=540.0, help="seconds for all steps together")
    p.add_argument("--gpus-per-trial", type=float, default=0.25)
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between nvidia-smi samples")
    p.add_argument("--launch-dir", help="MLflow store and Ray storage of the launch (default: a new temporary folder)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 4; 1 with --dry-run, whose ops are too small to share)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here (expected one; --dry-run runs the same steps on the CPU)")
    torch.set_num_threads(args.threads or (1 if args.dry_run else 4))
    device = "cpu" if args.dry_run else "cuda"
    start = time.monotonic()
    end = start + args.budget
    report: dict = {"mode": "dry-run" if args.dry_run else "gpu", "device": device, "torch": torch.__version__,
                    "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "budget_s": args.budget, "steps": {}}
    steps = {"equality": lambda d: equality_checks(device, args.dry_run), "train": lambda d: train_check(device, args.dry_run, d),
             "eval": lambda d: eval_check(args.dry_run), "launch": lambda d: launch_check(args, d)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, step in steps.items():
        if device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()  # the launch's trials get the memory of the steps before
        now = time.monotonic()
        limit = max(0.0, min(end - now, args.budget * SHARES[name]) if name in SHARES else end - now)
        t0 = time.perf_counter()
        alarm = {"fired": False}
        try:
            with time_limit(limit) as alarm:
                result = {"ok": True, **step(now + limit)}
        except Exception as e:  # a failed step is recorded and the next one still runs
            error = f"{type(e).__name__}: {e}"
            if alarm["fired"] and not isinstance(e, StepTimeout):
                error = f"StepTimeout: ran past its budget of {limit:.1f} s (surfaced as {error})"
            result = {"ok": False, "error": error, "traceback": traceback.format_exc().splitlines()[-8:]}
        result.update(step_s=time.perf_counter() - t0, budget_s=limit)
        report["steps"][name] = result
        report["total_s"] = time.monotonic() - start
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{name}: {'ok' if result['ok'] else result['error']} ({result['step_s']:.1f} s)", file=sys.stderr)
    equal = report["steps"]["equality"].get("all_ok", False)
    return 0 if equal and all(r["ok"] for r in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
