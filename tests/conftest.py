"""Shared fixtures: a tiny synthetic COCO dataset and a matching tiny config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tood.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train / 4 val images of 64x64 with objects of 10-40 px."""
    from tood.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("tiny_proxy")
    synthesize(root, n_train=8, n_val=4, seed=0, image_size=64, size=(10, 40), objects=(1, 4))
    return root


def tiny_config(data_root: Path, *overrides: str) -> Config:
    """The proxy profile shrunk to seconds: 64 px images, 16-channel head, 2 epochs."""
    return load_config(
        ROOT / "experiments/base.yaml",
        profile="proxy",
        overrides=[
            f"data.root={data_root}",
            "data.synthetic=null",
            "model.backbone.pretrained=null",
            "model.backbone.pretrain=null",
            "data.img_scale=[64, 64]",
            "model.neck_channels=16",
            "model.head.feat_channels=16",
            "model.head.gn_groups=4",
            "model.backbone.base_width=8",
            "train.epochs=2",
            "train.batch_size=4",
            "train.warmup_iters=2",
            "train.eval_every=1",
            "criterion.warmup_epochs=1",
            "test.batch_size=4",
            *overrides,
        ],
    )
