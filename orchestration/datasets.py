"""The datasets a launch's trials read, validated in the driver before any trial starts (each
distinct split once, and not again while its content stays the same) and matched against
each trial's ``model.num_classes``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tood.config import ConfigError


def dataset_cache_file() -> Path:
    """Where :func:`check_dataset` remembers the splits it validated: ``datasets.json`` beside
    the content-digest cache of :mod:`tood.data.fingerprint` (``~/.cache/tood-ablate/`` unless
    ``$TOOD_FINGERPRINT_CACHE`` moves it), keyed by the digests of the annotation file and of
    the image folder's listing, and the split."""
    from tood.data.fingerprint import cache_path

    return cache_path().with_name("datasets.json")


def check_dataset(ann: Path, images: Path, train: bool, quiet: bool = True) -> int:
    """The number of categories of the COCO split ``ann`` / ``images``, after
    :func:`tood.data.coco.validate_coco` accepted it (raises its DatasetError). A split with
    the same content as one validated before is not read again: the annotation file's digest
    costs a stat while its path, size, mtime, ctime and inode stay (the fingerprint cache), the
    image folder's a listing; COCO train's 118k image headers take minutes to check."""
    from tood.data.coco import load_coco_json, validate_coco
    from tood.data.fingerprint import DigestCache, image_set_digest

    try:
        digests = DigestCache()
        key = json.dumps([digests.digest(ann), image_set_digest(images), train])
        digests.save()
    except OSError:
        key = None  # missing or unreadable: validate_coco says what
    try:
        known = json.loads(dataset_cache_file().read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    if key and not quiet:
        print(f"tood-ablate: validating {ann} and {images} (once: remembered in {dataset_cache_file()})", file=sys.stderr)
    _, cat_ids, _ = validate_coco(load_coco_json(ann), ann, images, train)
    if key:
        try:
            dataset_cache_file().parent.mkdir(parents=True, exist_ok=True)
            tmp = dataset_cache_file().with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({**known, key: len(cat_ids)}, indent=1))
            os.replace(tmp, dataset_cache_file())
        except OSError:
            pass  # a cache that cannot be written costs a validation next time, nothing more
    return len(cat_ids)


def check_datasets(specs: list, quiet: bool = True) -> None:
    """Every split the trials of ``specs`` read from disk (not synthetic: the driver generates
    those), found, parsed and validated in this process (:func:`check_dataset`), each distinct
    one once, and its category count equal to the trial's ``model.num_classes``."""
    from tood.config import build_config
    from tood.data.coco import DatasetError
    from tood.data.loaders import split_paths

    seen: set[tuple[Path, Path, bool, int]] = set()
    for spec in specs:
        if spec.config["data"].get("synthetic") is not None:
            continue
        data = build_config(spec.config, f"trial {spec.name}").data
        for train in (True, False):
            ann, images = split_paths(data, train)
            classes = spec.config["model"]["num_classes"]
            if (ann, images, train, classes) in seen:
                continue
            seen.add((ann, images, train, classes))
            field_name = "data.train_ann" if train else "data.val_ann"
            try:
                found = check_dataset(ann, images, train, quiet)
            except DatasetError as e:
                head, *problems = str(e).splitlines()  # several problems: one a line, after a head line
                text = " ".join([head, "; ".join(p.strip() for p in problems)]).strip()
                raise ConfigError(f"{field_name}: {text} (trial {spec.name}; data.root {data.root}: --set data.root=PATH "
                                  "points the grid at the dataset)") from None
            if found != classes:
                raise ConfigError(f"{ann}: has {found} categories but model.num_classes is {classes} "
                                  f"(expected equal; set --set model.num_classes={found})")
