"""Evaluation loop: COCO AP on the dataset's own json plus the Table 6 alignment measures."""
from __future__ import annotations

from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from tood.boxes import clip_boxes
from tood.config import Config
from tood.eval.alignment import AlignmentAccumulator, InstancePredictions, instance_predictions
from tood.eval.coco_map import detections_to_coco, evaluate_coco
from tood.postprocess import detection_scores, postprocess


@torch.no_grad()
def predict(model: torch.nn.Module, loader, cfg: Config, device: torch.device, progress: bool = True):
    """Yield ``(batch, outputs, detections)``; detections are in original-image pixels."""
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
            batch = batch.to(device)
            outputs = model(batch.images)
            dets = postprocess(
                outputs,
                nms_pre=cfg.test.nms_pre,
                score_thr=cfg.test.score_thr,
                nms_iou=cfg.test.nms_iou,
                max_per_img=cfg.test.max_per_img,
                scale_factors=batch.scale_factors,
                orig_sizes=batch.orig_sizes,
                img_sizes=batch.img_sizes,
            )
            yield batch, outputs, dets
    finally:
        model.train(was_training)


def evaluate(model: torch.nn.Module, loader, cfg: Config, device: torch.device, progress: bool = True,
             on_batch: Callable[[Any, dict, InstancePredictions], None] | None = None,
             backend: str = "auto") -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl (0-100) and, if ``cfg.test.alignment``, PCC,
    top10_iou, n_correct, n_redundant, n_error over the whole ``loader``. ``on_batch(batch,
    outputs, inst)`` sees each batch's raw model outputs too, with the
    :func:`~tood.eval.alignment.instance_predictions` the alignment measures use (boxes clipped
    to the image, detection scores), for extra measures in the same pass. ``backend`` is the
    COCO evaluator (see :func:`~tood.eval.coco_map.evaluate_coco`; the same numbers either way)."""
    dataset = loader.dataset
    results: list[dict] = []
    align = AlignmentAccumulator() if cfg.test.alignment else None
    for batch, outputs, dets in predict(model, loader, cfg, device, progress):
        for det, image_id in zip(dets, batch.image_ids):
            results += detections_to_coco(det.boxes, det.scores, det.labels, [image_id] * len(det.scores), dataset.cat_ids)
        if align is None and on_batch is None:
            continue
        boxes = clip_boxes(outputs["boxes"].float(), batch.img_sizes)  # as postprocess ranks them
        inst = instance_predictions(detection_scores(outputs), boxes, batch.gt_boxes, batch.gt_labels, batch.gt_mask)
        if on_batch is not None:
            on_batch(batch, outputs, inst)
        if align is not None:
            # GTs back to original pixels so that the post-NMS counts compare like with like.
            gt_orig = batch.gt_boxes / batch.scale_factors[:, None, :].repeat(1, 1, 2)
            align.update_instances(inst)
            for b, det in enumerate(dets):
                m = batch.gt_mask[b]
                align.update_after_nms(det.boxes, det.scores, det.labels, gt_orig[b][m], batch.gt_labels[b][m])
    metrics = evaluate_coco(dataset.coco, results, backend=backend, img_ids=dataset.image_ids)
    if align is not None:
        metrics.update(align.result())
    return metrics
