"""Step 1 of benchmarks/gpu_check.py, equality: TAL and ATSS assignment, batched NMS, deformable
sampling (values and gradients), the losses and the whole criterion in both phases, on the device
against the CPU on the same seeded random inputs. Assignments and NMS keeps must be identical;
floats must agree within ``TOLERANCE``.

Imported by benchmarks/gpu_check.py, which puts the project and benchmarks/ on sys.path.
"""
from __future__ import annotations

import torch
from gpu_check_setup import ROOT, SIZES

from tood.config import load_config

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 results of the device against the CPU


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
