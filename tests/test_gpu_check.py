"""benchmarks/gpu_check.py stays runnable for the day a GPU is lent: its dry run (the same code on
the CPU at tiny sizes) fills every section of the report with numbers."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/gpu_check.py"
EQUALITY_CHECKS = {"tal_assign", "atss_assign", "batched_nms_300", "batched_nms_1200", "deform_sample", "losses",
                   "criterion_tal", "criterion_warmup"}
# The assigners' host reads that a training step cannot do without (see benchmarks/bench_syncs.py):
# the compactions of variable-size candidate sets and the width of TAL's top-k table.
INHERENT_ASSIGNER_SYNCS = {"aten::nonzero @ tood/assigners/common.py: where_true", "aten::item @ tood/assigners/task_aligned.py: _top_k"}


def _run(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = tmp / "gpu.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    return proc, json.loads(out.read_text()), time.monotonic() - t0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("gpu_check"))


def test_dry_run_finishes_quickly_with_every_step_ok(dry_run):
    proc, report, seconds = dry_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert seconds < 60
    assert report["mode"] == "dry-run" and report["device"] == "cpu"
    assert list(report["steps"]) == ["equality", "train", "eval", "launch"]
    for name, step in report["steps"].items():
        assert step["ok"], f"{name}: {step.get('error')}"
        assert 0 < step["step_s"] <= step["budget_s"]


def test_equality_checks_all_run_and_agree(dry_run):
    eq = dry_run[1]["steps"]["equality"]
    assert set(eq["checks"]) == EQUALITY_CHECKS
    assert eq["all_ok"] and all(c["ok"] for c in eq["checks"].values())
    assert eq["checks"]["tal_assign"]["positives"] > 0 and eq["checks"]["tal_assign"]["fg_mask"]["mismatches"] == 0
    assert 0 < eq["checks"]["batched_nms_1200"]["kept"] < 1200  # crowded boxes: NMS has work to do
    n_pos = eq["checks"]["criterion_tal"]["num_pos"]
    assert n_pos[0] == n_pos[1] > 0
    assert eq["tolerance"] == {"rtol": 1e-4, "atol": 1e-5}


def test_training_reports_speed_and_integer_sync_counts(dry_run):
    train = dry_run[1]["steps"]["train"]
    assert train["amp"] == "bf16" and train["batch"] == 2
    assert set(train["phases"]) == {"tal", "warmup"}
    for phase in train["phases"].values():
        assert phase["s_per_iter"] > 0 and phase["iterations"] >= 1 and len(phase["all_s"]) == phase["iterations"]
        assert phase["peak_memory_bytes"] is None  # CUDA only
        syncs = phase["syncs"]
        assert isinstance(syncs["aten_ops"], int) and syncs["aten_ops"] > 1000
        assert all(isinstance(v, int) for v in syncs["sync_calls"].values())
        assert syncs["sync_calls_total"] == sum(syncs["sync_calls"].values())
        assert isinstance(syncs["sync_points"], int) and syncs["sync_points"] == sum(syncs["sync_sites"].values())
        assert isinstance(syncs["tolist_calls"], int) and syncs["host_reads"] == syncs["sync_points"] + syncs["tolist_calls"]
        # every nonzero of a step is a host wait, so it is counted and placed
        assert syncs["sync_calls"]["aten::nonzero"] >= 1
        assigner_sites = {s for s in syncs["sync_sites"] if "tood/assigners/" in s}
        assert assigner_sites <= INHERENT_ASSIGNER_SYNCS, f"new host reads in the assigners: {assigner_sites - INHERENT_ASSIGNER_SYNCS}"
        assert syncs["sync_calls"]["aten::equal"] == 0  # layout checks read the device once, in level_grids' tolist


def test_evaluation_is_timed(dry_run):
    ev = dry_run[1]["steps"]["eval"]
    assert ev["images"] == 20 and ev["detections"] == 2000
    assert ev["seconds"] > 0 and 0 <= ev["AP"] <= 100


def test_launch_command_names_the_grid_and_parses(dry_run):
    launch = dry_run[1]["steps"]["launch"]
    assert launch["command"].startswith("tood-ablate run experiments/table6_alignment.yaml --profile proxy --gpus-per-trial 0.25 ")
    assert "--cpus-per-trial 2 --seeds 0" in launch["command"]
    assert launch["grid_exists"] and not launch["launched"]
    assert launch["parsed"] == {"grid": ["experiments/table6_alignment.yaml"], "profile": "proxy", "gpus_per_trial": 0.25,
                                "cpus_per_trial": 2.0, "seeds": "0"}
    assert launch["trials"] == 4  # 4 rows x 1 seed share the GPU at 0.25 each


def test_a_step_out_of_budget_is_recorded_and_the_next_steps_still_run(tmp_path):
    proc, report, _ = _run(tmp_path, "--budget", "1")
    assert proc.returncode == 1
    assert list(report["steps"]) == ["equality", "train", "eval", "launch"]
    train = report["steps"]["train"]  # 0.25 s cannot build and step a model
    assert not train["ok"] and train["error"].startswith("StepTimeout: ran past its budget")
    assert train["step_s"] < 5


def test_an_alarm_inside_an_import_waits_for_the_import_to_finish(tmp_path, monkeypatch):
    """Raised inside an import, the timeout would leave a half-initialised module (seen: a later
    step importing it failed with a RecursionError); the alarm fires once the import is done."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check_setup import StepTimeout, time_limit

    (tmp_path / "slow_module_for_alarm.py").write_text(
        "import time\nend = time.monotonic() + 0.3\nwhile time.monotonic() < end:\n    pass\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(StepTimeout), time_limit(0.02) as alarm:
        import slow_module_for_alarm
        while True:  # past the import the alarm must fire
            pass
    assert alarm["fired"] and time.monotonic() - t0 >= 0.3
    assert sys.modules["slow_module_for_alarm"].DONE
