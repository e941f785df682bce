"""Checkpoints that make a resumed run continue exactly where it stopped."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so an interrupted save never corrupts ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable tood checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        found = f"keys {', '.join(map(str, list(state)[:6]))}" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(f"{path}: model: missing (expected a tood checkpoint, a dict with the model's state_dict under "
                         f"'model' as `tood train` writes; got {found})")
    return state


def model_mismatch(saved: dict[str, Any], configured: dict[str, Any]) -> str | None:
    """The first model setting (dotted key) where a checkpoint's config differs from the one
    configured, worded for an error message; None when they agree or nothing was saved."""
    from tood.config import flatten

    old, new = flatten(saved), flatten(configured)
    for key in WEIGHT_KEYS:
        if key in old and key in new and old[key] != new[key]:
            return f"model.{key}: the checkpoint was trained with {old[key]!r}, the config has {new[key]!r}"
    return None


# Model settings that decide which weights exist and their shapes (not e.g. frozen_stages).
WEIGHT_KEYS = ("num_classes", "backbone.depth", "backbone.base_width", "neck_channels", "head.type", "head.feat_channels",
               "head.stacked_convs", "head.anchor_type", "head.layer_attention", "head.alignment_map", "head.offsets",
               "head.centerness", "strides")


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict of the bare model (unwrapping DistributedDataParallel)."""
    return getattr(model, "module", model).state_dict()
