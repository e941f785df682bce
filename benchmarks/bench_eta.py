"""How far the progress line's ETA is from the time actually left, on a real launch.

Runs ``tood-ablate run <grid> --profile <profile>`` into a fresh store, stamps every progress
line with the seconds since the launch started, and compares each "suite: k/n trials done, ...
ETA x" line from the third finished trial on with the time from that line to the last trial's
end. Writes JSON (one row per ETA line, and the worst error).

    .venv/bin/python benchmarks/bench_eta.py experiments/table4_alpha_beta.yaml --profile smoke \\
        --out benchmarks/results/eta_smoke_table4.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = re.compile(r"suite: (\d+)/(\d+) trials done, (\d+) running, ETA (?:(\d+) (s|min)|-)")


def eta_rows(stamped: list[tuple[float, str]]) -> list[dict]:
    """One row per ETA line from the third finished trial on: seconds since start, trials done,
    ETA, seconds actually left until the last 'n/n trials done' line."""
    lines = [(t, SUITE.search(text)) for t, text in stamped]
    lines = [(t, m) for t, m in lines if m]
    ends = [t for t, m in lines if m.group(1) == m.group(2)]
    if not ends:
        return []
    end = ends[0]
    rows = []
    for t, m in lines:
        done = int(m.group(1))
        if done < 3 or m.group(4) is None or t >= end:
            continue
        eta = float(m.group(4)) * (60 if m.group(5) == "min" else 1)
        left = end - t
        rows.append({"at_s": round(t, 1), "done": done, "eta_s": eta, "left_s": round(left, 1),
                     "error": round(eta / left - 1, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--seeds", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).with_name("tood-ablate")), "run", args.grid, "--profile", args.profile,
               "--tracking-uri", f"sqlite:///{tmp}/mlruns.db", "--storage-path", f"{tmp}/ray", "--name", "eta"]
        if args.seeds:
            cmd += ["--seeds", args.seeds]
        env = {**os.environ, "TOOD_ABLATE_PROGRESS": "lines"}
        t0 = time.monotonic()
        stamped: list[tuple[float, str]] = []
        with subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
            for text in proc.stderr:
                stamped.append((time.monotonic() - t0, text.rstrip()))
        rows = eta_rows(stamped)
    worst = max((abs(r["error"]) for r in rows), default=None)
    result = {"command": " ".join(cmd[1:]), "rc": proc.returncode, "wall_s": round(stamped[-1][0], 1) if stamped else None,
              "cpus": os.cpu_count(), "rows": rows, "worst_abs_error": worst}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    for r in rows:
        print(f"  {r['at_s']:7.1f} s  {r['done']:3d} done  ETA {r['eta_s']:6.0f} s  left {r['left_s']:6.1f} s  {r['error']:+.0%}")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
