"""PCC diagnostics (tood/eval/diagnostics.py) against python loops with scipy, and by hand;
the report side (reports/alignment_diagnostics.py) on hand-made trials."""
import json

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from orchestration.suite import trial_key
from reports.alignment_diagnostics import checkpoints_by_key, markdown
from tests.test_eval import alignment_case
from tood.boxes import box_iou
from tood.eval.alignment import instance_predictions
from tood.eval.diagnostics import DiagnosticsAccumulator, instance_diagnostics


def brute_force(cls_scores, pred_boxes, gt_boxes, gt_labels, gt_mask, depths=(5, 10, 20, 50), good=0.7, gap=0.1, kc=50):
    """Per instance, with loops: name -> list of the defined values."""
    out: dict[str, list[float]] = {}
    put = lambda name, v: out.setdefault(name, []).append(v)  # noqa: E731
    for i in range(gt_boxes.shape[0]):
        valid = [j for j in range(gt_boxes.shape[1]) if gt_mask[i, j]]
        ious = box_iou(pred_boxes[i], gt_boxes[i]).tolist()  # (A, G)
        for j in valid:
            mine = [n for n in range(len(ious)) if ious[n][j] > 0 and max(valid, key=lambda v: (ious[n][v], -v)) == j]
            s = {n: float(cls_scores[i, n, gt_labels[i, j]]) for n in mine}
            order = sorted(mine, key=lambda n: -s[n])
            ts, tu = [s[n] for n in order], [ious[n][j] for n in order]
            for k in depths:
                a, b = ts[:k], tu[:k]
                if len(a) >= 2 and len(set(a)) > 1 and len(set(b)) > 1:
                    put(f"PCC@{k}", pearsonr(a, b)[0])
                    put(f"spearman@{k}", spearmanr(a, b)[0])
            if not order:
                continue
            put("top1_iou", tu[0])
            put("best_iou", max(tu))
            put("regret", max(tu) - tu[0])
            goods = [n for n in order if ious[n][j] >= good]
            conf = [n for n in order if s[n] >= 0.5 * ts[0]]
            put("n_good", len(goods))
            put("n_confident", len(conf))
            if goods:
                put("good_suppressed", sum(n not in conf for n in goods) / len(goods))
            pairs = [(p, q) for p in range(min(kc, len(order))) for q in range(p + 1, min(kc, len(order))) if abs(tu[p] - tu[q]) > gap]
            if pairs:
                agree = [0.5 if ts[p] == ts[q] else float((tu[p] > tu[q]) == (ts[p] > ts[q])) for p, q in pairs]
                put(f"concordance@{kc}", sum(agree) / len(agree))
    return out


def test_diagnostics_match_python_loops_and_scipy():
    acc, ref = DiagnosticsAccumulator(), {}
    for seed in range(3):  # several batches add up to one mean over instances
        case = alignment_case(seed)
        acc.update(instance_predictions(*case))
        for name, values in brute_force(*case).items():
            ref.setdefault(name, []).extend(values)
    got = acc.result()
    assert set(got) == set(ref)
    for name, values in ref.items():
        assert got[name] == pytest.approx(sum(values) / len(values), abs=1e-6), name
    assert 0 < got["regret"] and 0 < got["good_suppressed"] < 1 and 0 < got["concordance@50"] < 1  # not degenerate
    assert acc.counts["top1_iou"] == len(ref["top1_iou"]) >= 15


def test_hand_case():
    """One GT [0, 0, 10, 10]; four boxes ranked by score 0.9, 0.5, 0.4, 0.1 with IoUs 0.8, 0.9,
    0.5, 0.2 (widths 8, 9, 5, 2 at full height, inside the GT)."""
    widths, scores = [8.0, 9.0, 5.0, 2.0], [0.9, 0.5, 0.4, 0.1]
    boxes = torch.tensor([[[0.0, 0.0, w, 10.0] for w in widths]])  # (1, 4, 4)
    cls = torch.tensor(scores)[None, :, None]  # (1, 4, 1)
    inst = instance_predictions(cls, boxes, torch.tensor([[[0.0, 0.0, 10.0, 10.0]]]), torch.tensor([[0]]), torch.tensor([[True]]))
    d = {k: s / n for k, (s, n) in instance_diagnostics(inst, depths=(2, 4)).items()}
    assert d["top1_iou"] == pytest.approx(0.8) and d["best_iou"] == pytest.approx(0.9)
    assert d["regret"] == pytest.approx(0.1)
    assert d["n_good"] == 2 and d["n_confident"] == 2  # IoU >= 0.7: 0.8, 0.9; score >= 0.45: 0.9, 0.5
    assert d["good_suppressed"] == 0.0
    # pairs with |dIoU| > 0.1: (.8,.5) (.8,.2) (.9,.5) (.9,.2) (.5,.2) all ordered by score; (.8,.9) is not clear
    assert d["concordance@50"] == 1.0
    assert d["PCC@2"] == pytest.approx(-1.0)  # two points: the higher score has the lower IoU
    assert d["PCC@4"] == pytest.approx(pearsonr(scores, [0.8, 0.9, 0.5, 0.2])[0])


def test_no_instances_give_nothing():
    inst = instance_predictions(torch.rand(1, 5, 2), torch.rand(1, 5, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long),
                                torch.zeros(1, 1, dtype=torch.bool))
    assert instance_diagnostics(inst) == {}
    acc = DiagnosticsAccumulator()
    acc.update(inst)
    assert acc.result() == {}


def test_checkpoints_found_by_key_in_any_launch_folder(tmp_path):
    for launch, trial, key, ckpts in [("a", "trial_0", "k1", ["checkpoint_000003", "checkpoint_000015"]),
                                       ("b", "trial_1", "k2", []), ("b", "trial_2", "k3", ["checkpoint_000015"])]:
        d = tmp_path / launch / trial
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"trial": {"key": key}}))
        for c in ckpts:
            (d / c).mkdir()
            (d / c / "last.pt").write_bytes(b"")
    (tmp_path / "a" / "trial_9").mkdir()
    (tmp_path / "a" / "trial_9" / "params.json").write_text("{not json")  # skipped, not fatal
    found = checkpoints_by_key(tmp_path)
    assert found == {"k1": tmp_path / "a/trial_0/checkpoint_000015/last.pt", "k3": tmp_path / "b/trial_2/checkpoint_000015/last.pt"}


def test_checkpoint_found_under_the_key_its_config_has_today(tmp_path):
    # a trial launched under an older key version records that key; its config hashes to today's
    config = {"name": "x", "criterion": {"assigner": "atss", "atss_topk": 9, "topk": 13}, "train": {"seed": 0}}
    d = tmp_path / "old" / "trial_0"
    (d / "checkpoint_000015").mkdir(parents=True)
    (d / "checkpoint_000015" / "last.pt").write_bytes(b"")
    (d / "params.json").write_text(json.dumps({"trial": {"key": "recorded", "config": config}}))
    found = checkpoints_by_key(tmp_path)
    ckpt = d / "checkpoint_000015" / "last.pt"
    assert found == {"recorded": ckpt, trial_key(config): ckpt}
    assert trial_key(config) != "recorded"
    # an ATSS trial's key leaves out TAL's topk: the same trial with another topk has the same key
    assert trial_key({**config, "criterion": {**config["criterion"], "topk": 5}}) in found


def test_markdown_paired_difference_by_hand():
    trials = [{"row": "ref", "seed": 0, "measures": {"PCC@50": 0.60}}, {"row": "ref", "seed": 1, "measures": {"PCC@50": 0.70}},
              {"row": "new", "seed": 0, "measures": {"PCC@50": 0.65}}, {"row": "new", "seed": 1, "measures": {"PCC@50": 0.79}},
              {"row": "new", "seed": 2}]  # no checkpoint: left out
    text = markdown(trials, measures=("PCC@50",))
    # ref: mean 0.65, sd 0.0707, t(0.975, 1) = 12.706 -> +-0.635; new - ref: 0.05, 0.09 -> mean 0.07, sd 0.0283, +-0.254
    assert "| ref | 2 | 0.650 [0.015, 1.285] |" in text
    assert "| new | 2 | +0.070 [-0.184, +0.324] |" in text


def test_trials_trained_with_set_are_found_with_the_same_set(tmp_path, capsys):
    # a launch with `run --set train.epochs=3` keyed its trials by that config: diagnose finds them
    # only when given the same --set (the empty last.pt is then reported as not a checkpoint)
    from orchestration.grid import expand_grid
    from reports.alignment_diagnostics import main
    from tests.test_orchestration import SMOKE

    spec = expand_grid(SMOKE, overrides={"train.epochs": 3})[0]
    d = tmp_path / "ray" / "launch" / "trial_0"
    (d / "checkpoint_000002").mkdir(parents=True)
    (d / "checkpoint_000002" / "last.pt").write_bytes(b"")
    (d / "params.json").write_text(json.dumps({"trial": {"key": trial_key(spec.config)}}))
    args = [str(SMOKE), "--storage", str(tmp_path / "ray"), "--out", str(tmp_path / "diag")]
    assert main(args) == 2 and "no checkpoint of any of the 2 trials" in capsys.readouterr().err
    assert main([*args, "--set", "train.epochs=3"]) == 0
    trials = json.loads((tmp_path / "diag.json").read_text())["trials"]
    assert [t["checkpoint"] != "" for t in trials] == [True, False]
    assert "not a readable tood checkpoint" in trials[0]["error"] and "measures" not in trials[0]
    assert "--set train.epochs=3" in json.loads((tmp_path / "diag.json").read_text())["command"]
