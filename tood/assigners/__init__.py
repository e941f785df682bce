"""Sample assigners: every one is batched over images and returns an AssignResult."""
from tood.assigners.atss import ATSSAssigner
from tood.assigners.base import AssignResult
from tood.assigners.center_sampling import CenterSamplingAssigner
from tood.assigners.fovea import FoveaAssigner
from tood.assigners.max_iou import MaxIoUAssigner
from tood.assigners.task_aligned import TaskAlignedAssigner

__all__ = ["ATSSAssigner", "AssignResult", "CenterSamplingAssigner", "FoveaAssigner", "MaxIoUAssigner", "TaskAlignedAssigner"]
