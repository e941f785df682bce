"""Step 4 of benchmarks/gpu_check.py, the launch: the proxy Table 6 at 16 epochs, one seed, packed on
the GPU with fractional ``--gpus-per-trial``, as a subprocess with what is left of the budget (wall
time, whether it finished, GPU utilisation sampled with nvidia-smi); a dry run only checks the
command (grid file, flags, trials).

Imported by benchmarks/gpu_check.py, which puts the project and benchmarks/ on sys.path.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpu_check_setup import ROOT, StepTimeout

GRID = "experiments/table6_alignment.yaml"
SHUTDOWN_S = 30  # kept back from the launch to stop Ray cleanly when it runs out of time


def launch_argv(gpus_per_trial: float, store: Path) -> list[str]:
    return ["run", GRID, "--profile", "proxy", "--gpus-per-trial", str(gpus_per_trial), "--cpus-per-trial", "2",
            "--seeds", "0", "--rerun", "--name", "gpu-check-table6", "--tracking-uri", f"sqlite:///{store}/mlruns.db",
            "--storage-path", str(store / "ray")]


def sample_gpu(samples: list, stop: threading.Event, every: float) -> None:
    query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    t0 = time.monotonic()
    while not stop.wait(every):
        try:
            line = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
            util, mem = (float(v) for v in line.split(","))
            samples.append({"t_s": round(time.monotonic() - t0, 1), "util_pct": util, "memory_mib": mem})
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass


def stop_process_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to the launch's process group (Tune stops its trials and Ray shuts down), then harder."""
    for sig, wait in ((signal.SIGINT, SHUTDOWN_S - 12), (signal.SIGTERM, 5), (signal.SIGKILL, 3)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def launch_check(args: argparse.Namespace, deadline: float) -> dict:
    """The launch command, checked (grid file, flags, trials); run unless ``--dry-run``."""
    from orchestration.grid import expand_grid
    from tood_ablate.cli import build_parser

    if args.launch_dir:
        store = Path(args.launch_dir)
    else:  # a dry run only names the folder
        store = Path(tempfile.gettempdir(), "gpu_check_launch") if args.dry_run else Path(tempfile.mkdtemp(prefix="gpu_check_launch_"))
    argv = launch_argv(args.gpus_per_trial, store)
    parsed = vars(build_parser().parse_args(argv))
    out = {"command": "tood-ablate " + shlex.join(argv), "grid_exists": (ROOT / GRID).is_file(),
           "parsed": {k: parsed[k] for k in ("grid", "profile", "gpus_per_trial", "cpus_per_trial", "seeds")},
           "trials": len(expand_grid(ROOT / GRID, "proxy", [0])), "launched": False, "store": str(store)}
    if args.dry_run:
        return out
    timeout = deadline - time.monotonic() - SHUTDOWN_S
    if timeout < 60:
        raise StepTimeout(f"{timeout:.0f} s left for the launch (expected >= 60)")
    log = args.out.with_suffix(".launch.log")
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_gpu, args=(samples, stop, args.sample_every), daemon=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tood_ablate", *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler.start()
        timed_out = True
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop.set()
            if proc.poll() is None:
                stop_process_group(proc)
    wall = time.monotonic() - t0
    util = [s["util_pct"] for s in samples]
    left = deadline - time.monotonic() - 2
    if left > 5:  # the trials' states, epochs and AP, from the launch's own store
        try:
            status = subprocess.run([sys.executable, "-m", "tood_ablate", "status", "gpu-check-table6", "--storage-path",
                                     str(store / "ray")], cwd=ROOT, capture_output=True, text=True, timeout=min(left, 30))
            out["status"] = (status.stdout + status.stderr).splitlines()[-12:]
        except subprocess.TimeoutExpired:
            out["status"] = ["tood-ablate status: timed out"]
    out.update(launched=True, wall_s=wall, timeout_s=timeout, timed_out=timed_out,
               returncode=proc.returncode, finished=not timed_out and proc.returncode == 0, log=str(log),
               log_tail=log.read_text(errors="replace").splitlines()[-30:],
               gpu_util_mean_pct=sum(util) / len(util) if util else None, gpu_util_max_pct=max(util) if util else None,
               gpu_samples=samples)
    return out
