"""Detection heads: the T-head (``TOODHead``) and the parallel baseline (``ParallelHead``).

Both map FPN features and the pyramid's :class:`~tood.priors.Priors` to a dict of raw
outputs flattened over levels like the priors: ``cls_logits (B, A, C)``, ``boxes (B, A, 4)``
xyxy pixels, ``centerness (B, A)`` or None. The implementations live in
``tood_head.py`` (with the shared decode / sampling ops) and ``parallel_head.py``.
"""
from tood.model.parallel_head import ParallelHead
from tood.model.tood_head import TaskDecomposition, TOODHead, aligned_logit, decode_level, deform_sample, sample_boxes

__all__ = ["ParallelHead", "TOODHead", "TaskDecomposition", "aligned_logit", "decode_level", "deform_sample", "sample_boxes"]
