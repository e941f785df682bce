"""Where a trial ran: the host's CPU model, cores, GPUs and library versions, written by each
trial as the ``tood.host`` tag (:func:`host_tag`) and read back by the reports."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Machine:
    """The host and library versions (``torch`` etc. as installed where the report runs)."""

    cpu: str
    cores: int
    gpu: str
    torch: str
    ray: str
    mlflow: str
    recorded: bool = False  # read from the trials' tood.host tags, not this host


def machine() -> Machine:
    """This host: CPU model (/proc/cpuinfo, else platform), logical cores, CUDA GPUs (or 'none')."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return Machine(cpu, os.cpu_count() or 0, ", ".join(gpus) or "none", metadata.version("torch"),
                   metadata.version("ray"), metadata.version("mlflow"))


def host_tag() -> str:
    """The ``tood.host`` tag a trial writes where it runs (read back by :func:`recorded_machine`)."""
    m = machine()
    return json.dumps({"cpu": m.cpu, "cores": m.cores, "gpu": m.gpu, "torch": m.torch, "ray": m.ray, "mlflow": m.mlflow,
                       "recorded": True})
