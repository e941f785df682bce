"""Host-device synchronisations per training step of the proxy, counted with torch.profiler.

Case: the `proxy` profile of experiments/base.yaml (ResNet-18 at 1/4 width, 64-channel FPN and
T-head, 5 classes), a batch of 8 images of 160 px drawn by the proxy's own generator (its knobs,
fixed seed), random weights (counts do not depend on them). One step = forward + criterion +
backward, once in the TAL phase (epoch = criterion.warmup_epochs) and once in the ATSS warm-up
(epoch 0); each after one unprofiled step.

Counted per step:
- ``aten_ops``: operator calls (``aten::*`` events, nested ones included);
- ``sync_calls``: events of the ops that read a device value on the host (:data:`SYNC_OPS`), nested
  ones included (``.item()`` shows as ``aten::item`` and ``aten::_local_scalar_dense``);
- ``sync_points``: the outermost of those, i.e. distinct waits for the device, with their call sites;
- ``tolist_calls``: ``Tensor.tolist()`` calls, a device read the CPU profiler shows no op for;
- ``host_reads``: ``sync_points + tolist_calls``, the reads of device values a CPU run can see;
- on CUDA also the runtime's synchronize events (:data:`CUDA_SYNC_EVENTS`), which include the waits
  of host-to-device copies of Python lists (``torch.tensor(list, device=cuda)``).
Syncs that only CUDA has (``bincount``'s min/max reads) or only the CPU has (``F.one_hot``'s range
check) show only on that device: benchmarks/gpu_check.py counts the CUDA side.
Writes benchmarks/results/bench_syncs.json.
Run: .venv/bin/python benchmarks/bench_syncs.py [--threads 2] [--batch 8] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tood.build import build_criterion, build_model  # noqa: E402
from tood.config import Config, load_config  # noqa: E402
from tood.data.synthetic import Knobs, render_image  # noqa: E402
from tood.data.transforms import Batch, build_transforms, collate  # noqa: E402

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero")
CUDA_SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
NO_WEIGHTS = ["model.backbone.pretrained=null", "model.backbone.pretrain=null"]  # counts need no pre-training


def _call_site(event) -> str:
    """``op [in parent op] @ file: function``: the innermost function of the project's code on the
    event's Python stack (the profiler gives the function's first line, so no line number) and
    the op it ran inside (``aten::index`` for a boolean mask, ``IndexBackward0`` in backward)."""
    where = "?"
    for frame in event.stack or []:
        if "tood/" in frame or "benchmarks/" in frame:
            path, _, func = frame.partition(": ")
            where = f"{re.sub(r'[(][0-9]+[)]$', '', path).split('/main/')[-1]}: {func}"
            break
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith("aten::"):
        parent = parent.cpu_parent
    inside = f" in {parent.name}" if parent is not None else ""
    return f"{event.name}{inside} @ {where}"


def count_syncs(fn: Callable[[], object], cuda: bool = False) -> dict:
    """Run ``fn()`` once under torch.profiler and count its host-device synchronisations (module
    docstring). With ``cuda`` the CUDA activity is recorded too, for the runtime's synchronize events."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    tolist = torch.Tensor.tolist
    tolist_calls = 0

    def counting_tolist(self):
        nonlocal tolist_calls
        tolist_calls += 1
        return tolist(self)

    config = torch._C._profiler._ExperimentalConfig(verbose=True)  # Python stacks for the call sites
    if cuda:
        torch.cuda.synchronize()  # earlier work does not end inside the profile (and no synchronize of ours is in it)
    torch.Tensor.tolist = counting_tolist
    try:
        with torch.profiler.profile(activities=activities, with_stack=True, experimental_config=config) as prof:
            fn()
    finally:
        torch.Tensor.tolist = tolist
    events = prof.events()
    calls = Counter(e.name for e in events if e.name in SYNC_OPS)
    sites: Counter = Counter()
    for e in events:
        if e.name not in SYNC_OPS:
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name not in SYNC_OPS:
            parent = parent.cpu_parent
        if parent is None:  # outermost: one wait for the device
            sites[_call_site(e)] += 1
    out = {
        "aten_ops": sum(e.name.startswith("aten::") for e in events),
        "sync_calls": {name: calls.get(name, 0) for name in SYNC_OPS},
        "sync_calls_total": sum(calls.values()),
        "sync_points": sum(sites.values()),
        "tolist_calls": tolist_calls,
        "host_reads": sum(sites.values()) + tolist_calls,
        "sync_sites": dict(sorted(sites.items())),
    }
    if cuda:
        runtime = Counter(e.name for e in events if e.name in CUDA_SYNC_EVENTS)
        out["cuda_sync_events"] = {name: runtime.get(name, 0) for name in CUDA_SYNC_EVENTS}
        out["cuda_sync_events_total"] = sum(runtime.values())
    return out


def proxy_batch(cfg: Config, batch_size: int, seed: int = 0) -> Batch:
    """``batch_size`` images of the proxy generator (``cfg.data.synthetic``'s knobs and size),
    through the test transforms (resize to ``data.img_scale``, normalise) and collated."""
    s = cfg.data.synthetic
    knobs = Knobs(**s.knobs())  # as tood.data.loaders.ensure_synthetic makes the proxy
    transforms = build_transforms(False, img_scale=cfg.data.img_scale)
    samples = []
    for i in range(batch_size):
        pixels, objs = render_image(np.random.default_rng([seed, i]), s.image_size, s.image_size, knobs)
        boxes = torch.tensor([o["box"] for o in objs], dtype=torch.float32).reshape(-1, 4)  # (G, 4) xyxy px
        labels = torch.tensor([o["label"] for o in objs], dtype=torch.long)
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        samples.append(transforms({"image": image, "boxes": boxes, "labels": labels, "image_id": i + 1,
                                   "orig_size": (s.image_size, s.image_size)}))
    return collate(samples)


def step_counts(cfg: Config, batch: Batch, device: str = "cpu") -> dict:
    """Sync counts of one forward + criterion + backward step in each criterion phase."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, load_pretrained=False).to(device).train()
    criterion = build_criterion(cfg)
    batch = batch.to(device)

    def step(epoch: int) -> None:
        out = model(batch.images)
        criterion(out, batch.gt_boxes, batch.gt_labels, batch.gt_mask, epoch).total.backward()
        model.zero_grad(set_to_none=True)

    phases = {"tal": cfg.criterion.warmup_epochs, "warmup": 0}
    result = {}
    for name, epoch in phases.items():
        step(epoch)  # unprofiled: caches (priors) and lazy initialisation
        result[name] = {"epoch": epoch, **count_syncs(lambda: step(epoch), cuda=device == "cuda")}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_syncs.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "experiments/base.yaml", profile="proxy", overrides=NO_WEIGHTS)
    batch = proxy_batch(cfg, args.batch)
    report = {
        "case": {"profile": "proxy", "batch": args.batch, "input_hw": list(batch.images.shape[-2:]),
                 "gts_per_image": batch.gt_mask.sum(1).tolist(), "step": "forward + criterion + backward"},
        "device": args.device, "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "phases": step_counts(cfg, batch, args.device),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in report["phases"].items():
        print(f"{name}: {r['aten_ops']} aten ops, {r['sync_calls_total']} sync calls, {r['sync_points']} sync points, "
              f"{r['tolist_calls']} tolist, {r['host_reads']} host reads", file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
