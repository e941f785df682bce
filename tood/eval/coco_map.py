"""COCO box AP through faster-coco-eval or pycocotools, on the paper's 0-100 scale.

Both backends give the same numbers (tests/test_eval.py checks it to 1e-9 on COCO-sized
cases); faster-coco-eval runs the matching and accumulation in C++, about 10x faster
(benchmarks/bench_eval.py), so it is the default wherever it is installed.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from torch import Tensor

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # order of COCOeval.stats[:6]
BACKENDS = ("auto", "faster", "pycocotools")  # auto: faster where importable, else pycocotools


def detections_to_coco(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_ids: int | Sequence[int] | Tensor,
    cat_ids: Sequence[int],
) -> list[dict]:
    """Detections -> COCO result dicts ``{image_id, category_id, bbox [x, y, w, h], score}``.

    Args:
        boxes: ``(N, 4)`` xyxy in original-image pixels.
        scores: ``(N,)``.
        labels: ``(N,)`` contiguous labels 0..C-1; label ``i`` is COCO category ``cat_ids[i]``.
        image_ids: the COCO image id of every detection (``N`` values) or one id for all.
        cat_ids: contiguous label -> COCO category id.
    """
    n = boxes.shape[0]
    if isinstance(image_ids, int):
        ids = [image_ids] * n
    else:
        ids = [int(i) for i in (image_ids.tolist() if isinstance(image_ids, Tensor) else image_ids)]
    if len(ids) != n or scores.shape[0] != n or labels.shape[0] != n:
        raise ValueError(
            f"tood/eval/coco_map.py: detections_to_coco: boxes has {n} rows but scores {scores.shape[0]}, "
            f"labels {labels.shape[0]}, image_ids {len(ids)} (expected the same length)"
        )
    xywh = boxes.detach().float().cpu().clone()
    xywh[:, 2:] -= xywh[:, :2]
    cats = [cat_ids[int(k)] for k in labels.tolist()]
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(ids, cats, xywh.tolist(), scores.detach().float().cpu().tolist())
    ]


def _stats_to_metrics(stats: Sequence[float]) -> dict[str, float]:
    # COCOeval writes -1 for an area range with no ground truth; that is "undefined", not 0.
    return {k: float("nan") if v < 0 else float(v) * 100.0 for k, v in zip(METRIC_NAMES, stats[:6])}


def _empty_result(coco_cls, coco_gt):
    """A result COCO with no annotations (``loadRes([])`` fails in pycocotools)."""
    res = coco_cls()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    res.createIndex()
    return res


def _run_pycocotools(coco_gt, detections: list[dict], img_ids: list[int] | None) -> list[float]:
    from pycocotools.cocoeval import COCOeval

    coco_dt = coco_gt.loadRes(detections) if detections else _empty_result(type(coco_gt), coco_gt)
    ev = COCOeval(coco_gt, coco_dt, "bbox")
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats)


def _silent(*args, **kwargs) -> None:
    pass


def faster_available() -> bool:
    """Whether faster-coco-eval and its compiled extension import."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """``"faster"`` or ``"pycocotools"`` for ``backend`` (one of :data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"tood/eval/coco_map.py: backend: unknown value {backend!r} (expected one of: {', '.join(BACKENDS)})")
    if backend == "auto":
        return "faster" if faster_available() else "pycocotools"
    return backend


def _run_faster(coco_gt, detections: list[dict], img_ids: list[int] | None, verbose: bool) -> list[float]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError as e:
        raise ImportError(
            "tood/eval/coco_map.py: backend='faster' needs the faster-coco-eval package "
            "(pip install 'faster-coco-eval>=1.6'), or use backend='pycocotools' or 'auto'"
        ) from e
    log = {"print_function": print if verbose else _silent}
    # faster-coco-eval adds keys (ignore, area, id, ...) to the annotation dicts it is given and
    # changes nothing nested, so copies of the dicts keep the inputs intact; its use_deepcopy,
    # which loadRes applies to the detections too, would double the time on 5,000 images.
    gt = COCO({**coco_gt.dataset, "annotations": [dict(a) for a in coco_gt.dataset["annotations"]]}, **log)
    dt = gt.loadRes(detections)  # evaluate_coco's copies
    ev = COCOeval_faster(gt, dt, "bbox", **log)
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return list(ev.stats)


def evaluate_coco(
    coco_gt,
    detections: list[dict],
    backend: str = "auto",
    img_ids: Sequence[int] | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Standard COCO box evaluation.

    Args:
        coco_gt: a pycocotools ``COCO`` with the ground truth.
        detections: COCO result dicts (see :func:`detections_to_coco`); not modified.
        backend: ``"faster"`` (faster-coco-eval), ``"pycocotools"`` (the reference; same
            numbers, ~10x slower) or ``"auto"``: faster-coco-eval where it imports, else
            pycocotools.
        img_ids: evaluate on these images only (default: every image of ``coco_gt``).
        verbose: let the evaluator print its usual summary.
    Returns:
        ``{AP, AP50, AP75, APs, APm, APl}`` in 0-100. No detections give 0.0; an area
        range without any ground truth gives nan (pycocotools reports -1 there).
    """
    backend = resolve_backend(backend)
    dets = [dict(d) for d in detections]  # the evaluators add fields (area, id, iscrowd) in place
    ids = None if img_ids is None else [int(i) for i in img_ids]
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        if backend == "faster":
            stats = _run_faster(coco_gt, dets, ids, verbose)
        else:
            stats = _run_pycocotools(coco_gt, dets, ids)
    return _stats_to_metrics(stats)

