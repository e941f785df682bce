"""The typed configuration: one dataclass per section of a config file, and
:class:`ConfigError`. Loading and validation live beside it (``load.py``, ``validate.py``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the file."""


@dataclass
class PretrainConfig:
    """Synthetic stand-in for ImageNet pre-training (``tood.model.pretrain``): object-crop
    classification on a separate generated split, written to ``model.backbone.pretrained``."""

    n_images: int = 1000  # generated images; every annotated object becomes one crop
    seed: int = 1234  # generator and training seed, distinct from the detection data's
    epochs: int = 4
    crop_size: int = 64  # px
    batch_size: int = 64
    lr: float = 0.003  # AdamW, cosine to 0


@dataclass
class BackboneConfig:
    depth: int = 50
    base_width: int = 64  # < 64 scales every stage: the small CPU backbone for proxy runs
    frozen_stages: int = 1
    norm_eval: bool = True
    pretrained: str | None = None  # path to a torchvision ResNet state_dict (.pth)
    pretrain: PretrainConfig | None = None  # make `pretrained` synthetically if the file is absent


@dataclass
class HeadConfig:
    type: Literal["t_head", "parallel"] = "t_head"
    feat_channels: int = 256
    stacked_convs: int = 6
    anchor_type: Literal["anchor_free", "anchor_based"] = "anchor_free"
    layer_attention: bool = True  # T-head task decomposition
    alignment_map: bool = True  # T-head TAP: M
    alignment_map_prior: float = 0.01  # T-head: sigmoid(M) at init (the reference: the cls prior 0.01)
    offsets: bool = True  # T-head TAP: O
    centerness: bool = False  # parallel head: centerness branch
    gn_groups: int = 32


@dataclass
class ModelConfig:
    num_classes: int = 80
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck_channels: int = 256
    head: HeadConfig = field(default_factory=HeadConfig)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass
class CriterionConfig:
    assigner: Literal["tal", "atss", "max_iou", "center_sampling", "fovea"] = "tal"
    warmup_epochs: int = 4  # TAL only: ATSS + focal for the first epochs
    topk: int = 13  # TAL top-m
    alpha: float = 1.0
    beta: float = 6.0
    conflict: Literal["max_iou", "min_area"] = "max_iou"
    atss_topk: int = 9
    cls_target: Literal["auto", "hard", "soft"] = "auto"  # auto: soft for TAL, hard otherwise
    box_weight: Literal["auto", "none", "centerness", "target", "max_score"] = "auto"  # max_score: GFL's weighting
    reg_weight: float = 2.0
    center_radius: float = 1.5
    center_scale_factor: float = 1.0  # scales the FCOS and FoveaBox per-level size ranges (pixels, like the strides)
    fovea_sigma: float = 0.4  # FoveaBox: the positive region is sigma x the GT around its centre
    # IoU-based (max_iou) only: a positive's prior centre must lie inside its GT (the ATSS paper's
    # "in GT box" for RetinaNet; an anchor-free head regresses l, t, r, b >= 0 from that centre)
    iou_inside_gt: bool = True


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 16  # total over all workers
    lr: float = 0.01  # for base_batch_size; scaled linearly to batch_size
    base_batch_size: int = 16
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9  # SGD momentum; AdamW uses beta1 = momentum, beta2 = 0.999
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    lr_schedule: Literal["step", "linear", "cosine"] = "step"  # linear / cosine: to zero at the last iteration
    lr_steps: tuple[int, ...] = (8, 11)  # step only
    lr_gamma: float = 0.1  # step only
    grad_clip: float | None = None
    amp: Literal["off", "bf16", "fp16"] = "off"
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    eval_every: int = 1  # evaluate AP every N epochs (the last epoch always)
    max_iters_per_epoch: int | None = None


@dataclass
class SynthConfig:
    """The synthetic proxy (``tood.data.synthetic``); ``None`` knobs keep the generator's default."""

    n_train: int = 600
    n_val: int = 150
    seed: int = 0
    image_size: int = 256
    objects: tuple[int, ...] | None = None  # (min, max) objects per image
    size: tuple[int, ...] | None = None  # (min, max) long side in pixels
    aspect_max: float | None = None  # long / short side, log-uniform in [1, aspect_max]
    noise: float | None = None
    clutter: int | None = None
    distractors: int | None = None
    cue_size: float | None = None
    crowd_prob: float | None = None

    def knobs(self) -> dict:
        names = ("objects", "size", "aspect_max", "noise", "clutter", "distractors", "cue_size", "crowd_prob")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class DataConfig:
    root: str = "data/coco"
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    img_scale: tuple[int, int] = (1333, 800)
    multiscale: tuple[int, ...] | None = None  # short sides for multi-scale training
    flip_prob: float = 0.5
    synthetic: SynthConfig | None = None  # generate the proxy dataset under root if missing


@dataclass
class TestConfig:
    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.6
    max_per_img: int = 100
    batch_size: int = 8
    alignment: bool = True  # Table 6 measures during evaluation


@dataclass
class Config:
    name: str = "tood"
    model: ModelConfig = field(default_factory=ModelConfig)
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    test: TestConfig = field(default_factory=TestConfig)
