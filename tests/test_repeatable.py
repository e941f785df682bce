"""Repeatable training: the same config with the same thread count, in separate processes that
run side by side (as a launch's trials do), ends with bit-identical weights. Dedup by trial key,
prefix sharing and every "same numbers" test rest on this."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import hashlib, sys, tempfile
from pathlib import Path
import torch
from tests.conftest import tiny_config
from tood.engine import train

torch.set_num_threads(int(sys.argv[2]))
cfg = tiny_config(Path(sys.argv[1]), *sys.argv[3:])
with tempfile.TemporaryDirectory() as work:
    result = train(cfg, work, progress=False)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=False)["model"]
digest = hashlib.sha256()
for name in sorted(state):
    digest.update(name.encode())
    digest.update(state[name].detach().contiguous().numpy().tobytes())
print(digest.hexdigest(), repr(result.history[0]["loss_total"]))
"""


def _weights_in_processes(data: Path, threads: int, n: int, *overrides: str) -> list[str]:
    """Digest of the final weights (and the first epoch's loss) of ``n`` trainings run at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("MKL_CBWR", "MKL_DYNAMIC"):  # what tood sets on import, not what this shell has
        env.pop(name, None)
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, str(data), str(threads), *overrides], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return [out.strip() for out, _ in outs]


@pytest.mark.parametrize("overrides", [(), ("criterion.assigner=atss",)], ids=["tal", "atss"])
def test_same_config_same_threads_gives_identical_weights_across_processes(tiny_data, overrides):
    runs = _weights_in_processes(tiny_data, 2, 3, "train.epochs=3", *overrides)
    assert len(set(runs)) == 1, runs
    other_seed = _weights_in_processes(tiny_data, 2, 1, "train.epochs=3", "train.seed=1", *overrides)
    assert other_seed[0].split()[0] != runs[0].split()[0]  # the digest sees the weights


def test_importing_tood_pins_mkl_unless_the_environment_sets_it():
    code = "import os, tood; print(os.environ['MKL_CBWR'], os.environ['MKL_DYNAMIC'])"
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_DYNAMIC")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AUTO,STRICT", "FALSE"]
    mine = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "MKL_CBWR": "COMPATIBLE"},
                          capture_output=True, text=True, check=True)
    assert mine.stdout.split() == ["COMPATIBLE", "FALSE"]
