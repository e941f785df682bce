"""Evaluation measures: COCO AP (coco_map) and the Table 6 alignment measures (alignment)."""
from tood.eval.alignment import (
    AlignmentAccumulator,
    AlignmentSums,
    DetectionCounts,
    alignment_before_nms,
    count_detection_types,
)
from tood.eval.coco_map import detections_to_coco, evaluate_coco

__all__ = [
    "AlignmentAccumulator",
    "AlignmentSums",
    "DetectionCounts",
    "alignment_before_nms",
    "count_detection_types",
    "detections_to_coco",
    "evaluate_coco",
]
