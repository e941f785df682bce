"""Datasets and loaders from configuration, deterministic per (seed, epoch)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from tood.cache import exclusive, require_recipe
from tood.config import Config, ConfigError, DataConfig
from tood.data.coco import CocoDetection
from tood.data.transforms import build_transforms, collate


def split_paths(data: DataConfig, train: bool) -> tuple[Path, Path]:
    root = Path(data.root)
    if train:
        return root / data.train_ann, root / data.train_images
    return root / data.val_ann, root / data.val_images


def ensure_synthetic(data: DataConfig) -> None:
    """Generate the synthetic proxy under ``data.root`` if the config asks for it and it is absent.

    A file lock makes concurrent callers (several trials on one machine) generate it once.
    """
    if data.synthetic is None:
        return
    from tood.data.synthetic import synthesize

    root = Path(data.root)
    with exclusive(root / ".synth.lock"):
        s = data.synthetic
        knobs = {k: list(v) if isinstance(v, tuple) else v for k, v in s.knobs().items()}
        wanted = {"seed": s.seed, "n_train": s.n_train, "n_val": s.n_val, "image_size": [s.image_size, s.image_size], **knobs}
        ann = split_paths(data, True)[0]
        if all(p.exists() for train in (True, False) for p in split_paths(data, train)):
            info = json.loads(ann.read_text()).get("info", {})
            found = {k: info.get("knobs", {}).get(k) if k in knobs else info.get(k) for k in wanted}
            require_recipe(ann, "synthetic data was generated", found, "data.synthetic", wanted,
                           f"delete {root} to regenerate it, or point data.root elsewhere")
            return
        synthesize(root, n_train=s.n_train, n_val=s.n_val, seed=s.seed, image_size=(s.image_size, s.image_size), **s.knobs())


def build_dataset(cfg: Config, train: bool) -> CocoDetection:
    ensure_synthetic(cfg.data)
    ann, images = split_paths(cfg.data, train)
    transforms = build_transforms(train, img_scale=cfg.data.img_scale, multiscale=cfg.data.multiscale, flip_prob=cfg.data.flip_prob)
    dataset = CocoDetection(ann, images, transforms=transforms, train=train, seed=cfg.train.seed if train else None)
    if len(dataset.cat_ids) != cfg.model.num_classes:
        raise ConfigError(
            f"{ann}: has {len(dataset.cat_ids)} categories but model.num_classes is {cfg.model.num_classes} "
            f"(expected equal; set --set model.num_classes={len(dataset.cat_ids)})"
        )
    return dataset


class EpochLoader:
    """A DataLoader whose order and augmentation are fixed by (seed, epoch): call
    :meth:`set_epoch` before iterating. Shards the data when ``world > 1``."""

    def __init__(self, dataset: CocoDetection, batch_size: int, train: bool, seed: int, workers: int, rank: int = 0, world: int = 1):
        self.dataset = dataset
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=seed, drop_last=False)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,  # workers must see each epoch's set_epoch()
        )

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


def build_loader(cfg: Config, train: bool, rank: int = 0, world: int = 1) -> EpochLoader:
    dataset = build_dataset(cfg, train)
    if train:
        per_worker = max(cfg.train.batch_size // world, 1)
        return EpochLoader(dataset, per_worker, True, cfg.train.seed, cfg.train.workers, rank, world)
    return EpochLoader(dataset, cfg.test.batch_size, False, 0, cfg.train.workers)
