"""The trial payload: one typed record from the driver to the trial, a plain dict on the wire."""
from __future__ import annotations

import json

import pytest

from orchestration.payload import TrialPayload
from tood.config import ConfigError


def test_payload_survives_the_json_of_tune_and_the_launch_record():
    p = TrialPayload("k" * 16, "run1", "table6/head=t_head,seed=0", {"train": {"epochs": 16}}, alias_run_ids=["run2"],
                     cost=3.5, prefix={"key": "p" * 16, "epochs": 6, "dir": "/x", "found": None}, fail_once_at_epoch=2)
    back = TrialPayload.of(json.loads(json.dumps(p.as_dict())))
    assert back == p and back.epochs == 16 and back.run_ids == ("run1", "run2")
    assert TrialPayload.of(p) is p


def test_payload_of_an_older_record_takes_the_defaults_and_names_what_is_wrong():
    old = TrialPayload.of({"key": "k", "run_id": "r", "name": "n", "config": {}})  # a record from before the newer fields
    assert (old.reuse, old.max_failures, old.prefix, old.epochs) == ("any", 2, None, 1)
    with pytest.raises(ConfigError, match=r"trial payload: unknown field\(s\) colour"):
        TrialPayload.of({"key": "k", "run_id": "r", "name": "n", "config": {}, "colour": 1})
    with pytest.raises(ConfigError, match=r"trial payload: missing field\(s\) run_id, config"):
        TrialPayload.of({"key": "k", "name": "n"})
