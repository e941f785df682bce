"""What every step of benchmarks/gpu_check.py shares: the repository root, the sizes of its inputs
on a GPU and in a dry run (``SIZES``: (gpu, dry-run) pairs), and the alarm that stops a step past
its share of the budget (``time_limit``).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # (gpu, dry-run)
    "hw": ((800, 1333), (128, 160)),  # training input (h, w) before padding to a multiple of 32
    "equality_hw": ((800, 1344), (128, 160)),
    "nms_boxes": ((800, 3000), (300, 1200)),  # one below and one above tood/nms.py's single-matrix limit
    "eval_images": (500, 20),
    "iters": ((3, 10), (1, 3)),  # (warm-up, timed) training iterations per phase
}


class StepTimeout(Exception):
    """A step used up its share of the budget."""


RETRY_S = 0.05  # how soon an alarm that fell inside an import fires again


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextmanager
def time_limit(seconds: float):
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (at the next Python line).
    An alarm that falls inside an import waits for the import to finish (it fires again every
    ``RETRY_S``): raised there, it would leave a half-initialised module behind, and a later step
    importing it would fail with an unrelated error. Yields a dict whose ``fired`` says whether the
    timeout was raised."""
    state = {"fired": False}

    def expire(signum, frame):
        if _inside_import(frame):
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        state["fired"] = True
        raise StepTimeout(f"ran past its budget of {seconds:.1f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
