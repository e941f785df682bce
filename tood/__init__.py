"""TOOD: Task-aligned One-stage Object Detection (ICCV 2021) in plain PyTorch.

Repeatability on CPU: torch's x86 wheels do their matrix products in Intel MKL, which by
default may pick another code path when a buffer's memory alignment differs between runs, and
may use fewer threads than asked for under load (MKL_DYNAMIC); either changes the order of
float sums, so the same training in two processes could end with different weights. MKL reads
these settings when it first runs, so they are set here, before any tensor work, unless the
environment already sets them (docs/suites.md, "Repeatable training").
"""
import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # results independent of memory alignment
os.environ.setdefault("MKL_DYNAMIC", "FALSE")  # exactly the threads asked for
