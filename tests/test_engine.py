import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, tiny_config
from tood.checkpoint import load_checkpoint
from tood.engine import NonFiniteLossError, build_optimizer, train
from tood.evaluate import evaluate


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("head,assigner,optimizer", [("t_head", "tal", "sgd"), ("parallel", "atss", "sgd"), ("t_head", "tal", "adamw")])
def test_resume_matches_uninterrupted_run(tiny_data, tmp_path, head, assigner, optimizer):
    overrides = [f"model.head.type={head}", f"criterion.assigner={assigner}", "model.head.stacked_convs=" + ("6" if head == "t_head" else "4"),
                 f"train.optimizer={optimizer}"] + (["train.lr=0.001", "train.weight_decay=0.05"] if optimizer == "adamw" else [])
    cfg = tiny_config(tiny_data, *overrides, "train.epochs=3")
    full = train(cfg, tmp_path / "full", progress=False)

    def stop_after_first(end):
        if end.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", progress=False, on_epoch_end=stop_after_first)
    assert load_checkpoint(tmp_path / "cut/last.pt")["epoch"] == 1
    resumed = train(cfg, tmp_path / "cut", progress=False, resume=True)

    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for key in ("loss_total", "loss_cls", "loss_box"):
        for a, b in zip(full.history, resumed.history):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    for key in ("AP", "AP50", "PCC", "top10_iou", "n_correct"):
        assert full.metrics[key] == pytest.approx(resumed.metrics[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    w_full = load_checkpoint(tmp_path / "full/last.pt")["model"]
    w_cut = load_checkpoint(tmp_path / "cut/last.pt")["model"]
    for name in w_full:
        torch.testing.assert_close(w_full[name], w_cut[name], rtol=1e-5, atol=1e-6, msg=name)


def test_build_optimizer_follows_config(tiny_data):
    params = [torch.nn.Parameter(torch.ones(3))]
    sgd = build_optimizer(tiny_config(tiny_data, "train.optimizer=sgd", "train.momentum=0.8", "train.weight_decay=0.001"), params)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.8 and sgd.defaults["weight_decay"] == 0.001
    adamw = build_optimizer(tiny_config(tiny_data, "train.optimizer=adamw", "train.momentum=0.8", "train.weight_decay=0.05"), params)
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.8, 0.999) and adamw.defaults["weight_decay"] == 0.05
    # AdamW's decay is decoupled: with zero gradient one step shrinks the weights by lr * wd exactly.
    adamw.param_groups[0]["lr"] = 0.1
    params[0].grad = torch.zeros(3)
    adamw.step()
    torch.testing.assert_close(params[0].detach(), torch.full((3,), 1 - 0.1 * 0.05))


def test_non_finite_loss_names_epoch_iteration_and_term(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.lr=1.0e+12", "train.warmup_iters=0", "train.epochs=3", "train.batch_size=2")
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, iteration \d+: loss term 'loss_\w+' is (nan|inf|-inf)"):
        train(cfg, tmp_path / "nan", progress=False)


def test_cli_train_eval_detect_roundtrip(tiny_data, tmp_path):
    from tood.model.backbone import ResNet

    work = tmp_path / "cli"
    backbone = tmp_path / "backbone.pth"  # the proxy's ResNet-18 at 1/4 width, torchvision keys
    torch.save(ResNet(depth=18, base_width=16).state_dict(), backbone)
    sets = ["--set", f"model.backbone.pretrained={backbone}", "--set", "model.backbone.pretrain=null", "--set", f"data.root={tiny_data}", "--set", "data.synthetic=null", "--set", "data.img_scale=[64, 64]", "--set", "train.epochs=1",
            "--set", "model.neck_channels=16", "--set", "model.head.feat_channels=16", "--set", "model.head.gn_groups=4"]
    base = [sys.executable, "-m", "tood.cli"]
    cfg = str(ROOT / "experiments/base.yaml")
    r = subprocess.run(base + ["train", cfg, "--profile", "proxy", *sets, "--work-dir", str(work), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    trained = json.loads((work / "metrics.json").read_text())
    backbone.unlink()  # eval and detect take every weight from the checkpoint
    r = subprocess.run(base + ["eval", cfg, str(work / "last.pt"), "--profile", "proxy", *sets, "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    evaluated = json.loads(r.stdout)
    assert evaluated["AP"] == pytest.approx(trained["AP"], abs=1e-9)
    image = next((tiny_data / "val").glob("*.png"))
    r = subprocess.run(base + ["detect", cfg, str(work / "last.pt"), str(image), "--profile", "proxy", *sets, "--out", str(tmp_path / "det"), "--score-thr", "0.0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dets = json.loads((tmp_path / "det" / f"{image.stem}.json").read_text())["detections"]
    assert 0 < len(dets) <= 100 and all(d["box_xyxy"][2] <= 64 and d["box_xyxy"][3] <= 64 for d in dets)
    assert (tmp_path / "det" / f"{image.stem}.png").is_file()


def test_cli_reports_config_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochz: 3\n")
    r = subprocess.run([sys.executable, "-m", "tood.cli", "train", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "bad.yaml: train.epochz: unknown key; did you mean 'epochs'" in r.stderr
    assert "Traceback" not in r.stderr


def test_eval_time_is_logged_on_the_epochs_that_evaluate(tiny_data, tmp_path, monkeypatch):
    """eval_every=2 over 3 epochs evaluates after epochs 2 and 3 (the last); eval_time_s is the
    wall time of those evaluations (here at least the 0.2 s each is made to sleep) and absent
    from epoch 1, in the history and in what ``log`` receives."""
    def slow_evaluate(*args, **kwargs):
        time.sleep(0.2)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr("tood.engine.evaluate", slow_evaluate)
    logged = {}
    cfg = tiny_config(tiny_data, "train.epochs=3", "train.eval_every=2")
    result = train(cfg, tmp_path / "run", progress=False, log=lambda metrics, step: logged.__setitem__(step, metrics))
    assert [("eval_time_s" in h, "epoch_AP" in h) for h in result.history] == [(False, False), (True, True), (True, True)]
    assert all(h["eval_time_s"] >= 0.2 for h in result.history[1:])
    assert [step for step, m in sorted(logged.items()) if "eval_time_s" in m] == [2, 3]
    assert result.metrics["eval_time_s"] == result.history[-1]["eval_time_s"]
