"""Credentials kept out of MLflow: a config value whose name looks like a secret is logged as
``***``, in the params of a trial run and in its config.yaml artifact alike.
"""
from __future__ import annotations

import re
from typing import Any

SECRET_PARTS = ("token", "password", "passwd", "secret", "credential", "credentials", "apikey")
SECRET_KEY_PREFIXES = ("api", "access", "private", "secret", "auth", "signing", "encryption", "ssh")
MASK = "***"


def is_secret_name(name: str) -> bool:
    """A param name that looks like a credential, judged by its parts (split at . _ -): a part
    token/password/secret/..., or ``key`` alone or after api/access/private/... So
    ``auth_token`` and ``db.api_key`` are secrets; ``topk``, ``atss_topk``, ``trial_key`` are not."""
    parts = [p for p in re.split(r"[._\-]+", name.lower()) if p]
    if any(p in SECRET_PARTS for p in parts) or parts == ["key"]:
        return True
    return any(a in SECRET_KEY_PREFIXES and b == "key" for a, b in zip(parts, parts[1:]))


def mask_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the value of every secret-looking name (:func:`is_secret_name`) masked."""
    return {k: MASK if is_secret_name(k) else v for k, v in params.items()}


def mask_nested(data: Any, prefix: str = "") -> Any:
    """A copy of a nested mapping (a config) with every secret-looking dotted name masked, so
    the config.yaml artifact says no more than the params do."""
    if not isinstance(data, dict):
        return data
    out = {}
    for k, v in data.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        out[k] = MASK if is_secret_name(name) and not isinstance(v, dict) else mask_nested(v, name)
    return out
