"""Datasets (COCO json + images, synthetic proxy), transforms and batch collation."""
from tood.data.coco import CocoDetection, DatasetError
from tood.data.transforms import Batch, Transforms, build_transforms, collate

__all__ = ["Batch", "CocoDetection", "DatasetError", "Transforms", "build_transforms", "collate"]
