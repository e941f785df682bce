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
Run: python benchmarks/gpu_check.py [--dry-run] [--out PATH] [--budget 540]
     on a lent GPU machine: python benchmarks/gpu_check.py --out $OUT/gpu_check.json  (a 600 s command limit;
     the launch's log lands beside the report as gpu_check.launch.log)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_syncs import count_syncs  # noqa: E402
from tood.config import load_config  # noqa: E402
from tood.data.transforms import Batch  # noqa: E402

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 results of the device against the CPU
GRID = "experiments/table6_alignment.yaml"
SHARES = {"equality": 0.12, "train": 0.25, "eval": 0.08}  # of --budget; the launch gets what is left
SHUTDOWN_S = 30  # kept back from the launch to stop Ray cleanly when it runs out of time
SIZES = {  # (gpu, dry-run)
    "hw": ((800, 1333), (128, 160)),  # training input (h, w) before padding to a multiple of 32
    "equality_hw": ((800, 1344), (128, 160)),
    "nms_boxes": ((800, 3000), (300, 1200)),  # one below and one above tood/nms.py's single-matrix limit
    "eval_images": (500, 20),
    "iters": ((3, 10), (1, 3)),  # (warm-up, timed) training iterations per phase
}
SMALL_MODEL = ["model.backbone.depth=18", "model.backbone.base_width=8", "model.neck_channels=16",
               "model.head.feat_channels=16", "model.head.gn_groups=4"]


class StepTimeout(Exception):
    """A step used up its share of the budget."""


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (at the next Python line).
    Yields a dict whose ``fired`` says whether the alarm went off: raised inside an import, the
    timeout can surface later as another error (a half-initialised module)."""
    state = {"fired": False}

    def expire(signum, frame):
        state["fired"] = True
        raise StepTimeout(f"ran past its budget of {seconds:.1f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def close(ref: torch.Tensor, out: torch.Tensor) -> dict:
    out = out.detach().cpu().to(ref.dtype)
    ref = ref.detach().cpu()
    diff = (out - ref).abs()
    return {"ok": bool(torch.allclose(out, ref, **TOLERANCE)), "max_abs_diff": float(diff.max()) if diff.numel() else 0.0}


def same(ref: torch.Tensor, out: torch.Tensor) -> dict:
    out = out.detach().cpu()
    if out.shape != ref.shape:
        return {"ok": False, "shapes": [list(ref.shape), list(out.shape)]}
    return {"ok": bool(torch.equal(ref, out)), "mismatches": int((ref != out).sum())}


def on_both(device: str, fn, *inputs):
    """``fn(d, *inputs)`` on the CPU (the reference) and on ``device``, from the same inputs."""
    return fn("cpu", *inputs), fn(device, *(x.to(device) for x in inputs))


def _all_ok(parts: dict) -> dict:
    return {"ok": all(p["ok"] for p in parts.values()), **parts}


def _detector_case(dry: bool) -> dict:
    """Seeded random detector outputs and padded GTs on the priors of one input size, 80 classes."""
    from tood.priors import make_priors

    g = torch.Generator().manual_seed(0)
    h, w = SIZES["equality_hw"][dry]
    strides = (8, 16, 32, 64, 128)
    sizes = [(-(-h // s), -(-w // s)) for s in strides]
    priors = make_priors(sizes, strides=strides)
    b, a, gmax, c = 2, priors.num_priors, 12, 80
    xy = torch.rand(b, gmax, 2, generator=g) * torch.tensor([w, h])
    wh = torch.rand(b, gmax, 2, generator=g).pow(2) * min(h, w) / 2 + 4
    stride = priors.strides[None, :, None]
    pxy = priors.points[None] + torch.randn(b, a, 2, generator=g) * stride  # (B, A, 2) predicted centres
    pwh = (torch.rand(b, a, 2, generator=g) * 7 + 1) * stride
    return {"priors": lambda d: make_priors(sizes, strides=strides, device=d), "points": priors.points[None].expand(b, -1, -1),
            "gt": torch.cat([xy - wh / 2, xy + wh / 2], -1),  # (B, G, 4)
            "labels": torch.randint(0, c, (b, gmax), generator=g),
            "mask": torch.arange(gmax)[None] < torch.tensor([[gmax], [gmax // 2]]),  # (B, G) image 1: half padding
            "boxes": torch.cat([pxy - pwh / 2, pxy + pwh / 2], -1),  # (B, A, 4)
            "targets": torch.cat([pxy - pwh / 3, pxy + pwh / 4], -1),  # (B, A, 4)
            "logits": torch.randn(b, a, c, generator=g) * 2 - 2,  # (B, A, C)
            "onehot": torch.nn.functional.one_hot(torch.randint(0, c + 1, (b, a), generator=g), c + 1)[..., :c].float(),
            "quality": torch.rand(b, a, 1, generator=g), "generator": g}


def _assignment_checks(device: str, case: dict) -> dict:
    from tood.assigners import ATSSAssigner, TaskAlignedAssigner

    checks = {}
    inputs = (case["logits"].sigmoid(), case["boxes"], case["gt"], case["labels"], case["mask"])
    for name, assigner in (("tal_assign", TaskAlignedAssigner(80)), ("atss_assign", ATSSAssigner(80))):
        ref, out = on_both(device, lambda d, *x: assigner(case["priors"](d), *x), *inputs)
        parts = {f: same(getattr(ref, f), getattr(out, f)) for f in ("labels", "fg_mask", "gt_index", "boxes")}
        checks[name] = {**_all_ok({**parts, "scores": close(ref.scores, out.scores)}), "positives": int(ref.fg_mask.sum())}
    return checks


def _nms_checks(device: str, dry: bool, g: torch.Generator) -> dict:
    from tood.nms import batched_nms

    checks = {}
    for n in SIZES["nms_boxes"][dry]:
        obj = torch.rand(n // 8, 4, generator=g) * torch.tensor([600.0, 600.0, 150.0, 150.0]) + 10  # (x, y, w, h)
        near = obj[torch.randint(0, n // 8, (n,), generator=g)]  # (N, 4) detections jittered around the objects
        near = near + torch.randn(n, 4, generator=g) * 0.08 * near[:, 2:].repeat(1, 2)
        boxes = torch.cat([near[:, :2], near[:, :2] + near[:, 2:].clamp(min=2)], 1)
        scores = (torch.rand(n, generator=g) * 100).round() / 100  # ties, as float32 model scores have
        ref, out = on_both(device, lambda d, *x: batched_nms(*x, 0.6), boxes, scores, torch.randint(0, 10, (n,), generator=g))
        checks[f"batched_nms_{n}"] = {**same(ref, out), "kept": int(ref.numel())}
    return checks


def _deform_check(device: str, dry: bool, g: torch.Generator) -> dict:
    from tood.model.tood_head import deform_sample, sample_boxes

    h, w = (v // 8 for v in SIZES["equality_hw"][dry])
    x, offsets = torch.randn(2, 4, h, w, generator=g), torch.randn(2, 8, h, w, generator=g) * 3  # some reads fall outside

    def run(d, xs, offs):
        xs, offs = xs.clone().requires_grad_(), offs.clone().requires_grad_()
        y = deform_sample(xs, offs)
        (y * torch.linspace(-1, 1, y.numel(), device=d).view_as(y)).sum().backward()
        return y.detach(), xs.grad, offs.grad, sample_boxes(xs.detach(), offs.detach())

    ref, out = on_both(device, run, x, offsets)
    return _all_ok(dict(zip(("values", "grad_x", "grad_offsets", "sample_boxes"), map(close, ref, out))))


def _loss_checks(device: str, case: dict) -> dict:
    from tood.build import build_criterion
    from tood.losses import centerness_target, focal_loss, giou_loss, quality_focal_loss

    pairs = {"focal": on_both(device, lambda d, *x: focal_loss(*x), case["logits"], case["onehot"]),
             "quality_focal": on_both(device, lambda d, *x: quality_focal_loss(*x), case["logits"], case["onehot"] * case["quality"]),
             "giou": on_both(device, lambda d, *x: giou_loss(*x), case["boxes"], case["targets"]),
             "centerness": on_both(device, lambda d, *x: centerness_target(*x), case["points"], case["targets"])}
    checks = {"losses": _all_ok({k: close(r, o) for k, (r, o) in pairs.items()})}
    cfg = load_config(ROOT / "experiments/base.yaml", profile="coco")
    criterion = build_criterion(cfg)
    for phase, epoch in (("tal", cfg.criterion.warmup_epochs), ("warmup", 0)):
        def loss(d, logits, boxes, *gts):
            r = criterion({"cls_logits": logits, "boxes": boxes, "centerness": None, "priors": case["priors"](d)}, *gts, epoch)
            return torch.stack([r.total, *r.terms.values()]), r.num_pos

        (ref, ref_pos), (out, out_pos) = on_both(device, loss, case["logits"], case["boxes"], case["gt"], case["labels"], case["mask"])
        result = close(ref, out)
        checks[f"criterion_{phase}"] = {**result, "ok": result["ok"] and ref_pos == out_pos, "num_pos": [ref_pos, out_pos]}
    return checks


def equality_checks(device: str, dry: bool) -> dict:
    """Every check on the CPU (the reference) and on ``device``, from the same seeded inputs."""
    case = _detector_case(dry)
    checks = {**_assignment_checks(device, case), **_nms_checks(device, dry, case["generator"]),
              "deform_sample": _deform_check(device, dry, case["generator"]), **_loss_checks(device, case)}
    return {"reference": "cpu", "device": device, "tolerance": TOLERANCE,
            "all_ok": all(v["ok"] for v in checks.values()), "checks": checks}


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


def launch_argv(gpus_per_trial: float, store: Path) -> list[str]:
    return ["run", GRID, "--profile", "proxy", "--gpus-per-trial", str(gpus_per_trial), "--cpus-per-trial", "2",
            "--seeds", "0", "--rerun", "--name", "gpu-check-table6", "--tracking-uri", f"sqlite:///{store}/mlruns.db",
            "--storage-path", str(store / "ray")]


def sample_gpu(samples: list, stop: threading.Event, every: float) -> None:
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    t0 = time.monotonic()
    while not stop.wait(every):
        try:
            line = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
            util, mem = (float(v) for v in line.split(","))
            samples.append({"t_s": round(time.monotonic() - t0, 1), "util_pct": util, "memory_mib": mem})
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass


def stop_process_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to the launch's process group (Tune stops its trials and Ray shuts down), then harder."""
    for sig, wait in ((signal.SIGINT, SHUTDOWN_S - 12), (signal.SIGTERM, 5), (signal.SIGKILL, 3)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def launch_check(args: argparse.Namespace, deadline: float) -> dict:
    """The launch command, checked (grid file, flags, trials); run unless ``--dry-run``."""
    from orchestration.grid import expand_grid
    from tood_ablate.cli import build_parser

    if args.launch_dir:
        store = Path(args.launch_dir)
    else:  # a dry run only names the folder
        store = Path(tempfile.gettempdir(), "gpu_check_launch") if args.dry_run else Path(tempfile.mkdtemp(prefix="gpu_check_launch_"))
    argv = launch_argv(args.gpus_per_trial, store)
    parsed = vars(build_parser().parse_args(argv))
    out = {"command": "tood-ablate " + shlex.join(argv), "grid_exists": (ROOT / GRID).is_file(),
           "parsed": {k: parsed[k] for k in ("grid", "profile", "gpus_per_trial", "cpus_per_trial", "seeds")},
           "trials": len(expand_grid(ROOT / GRID, "proxy", [0])), "launched": False, "store": str(store)}
    if args.dry_run:
        return out
    timeout = deadline - time.monotonic() - SHUTDOWN_S
    if timeout < 60:
        raise StepTimeout(f"{timeout:.0f} s left for the launch (expected >= 60)")
    log = args.out.with_suffix(".launch.log")
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(samples, stop, args.sample_every), daemon=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tood_ablate", *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler.start()
        timed_out = True
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop.set()
            if proc.poll() is None:
                stop_process_group(proc)
    wall = time.monotonic() - t0
    util = [s["util_pct"] for s in samples]
    left = deadline - time.monotonic() - 2
    if left > 5:  # the trials' states, epochs and AP, from the launch's own store
        try:
            status = subprocess.run([sys.executable, "-m", "tood_ablate", "status", "gpu-check-table6", "--storage-path",
                                     str(store / "ray")], cwd=ROOT, capture_output=True, text=True, timeout=min(left, 30))
            out["status"] = (status.stdout + status.stderr).splitlines()[-12:]
        except subprocess.TimeoutExpired:
            out["status"] = ["tood-ablate status: timed out"]
    out.update(launched=True, wall_s=wall, timeout_s=timeout, timed_out=timed_out,
               returncode=proc.returncode, finished=not timed_out and proc.returncode == 0, log=str(log),
               log_tail=log.read_text(errors="replace").splitlines()[-30:],
               gpu_util_mean_pct=sum(util) / len(util) if util else None, gpu_util_max_pct=max(util) if util else None,
               gpu_samples=samples)
    return out


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
        limit = min(end - now, args.budget * SHARES[name]) if name in SHARES else end - now
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
