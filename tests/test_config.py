import math
from pathlib import Path

import pytest

from tood.config import Config, ConfigError, load_config, to_dict, build_config
from tood.engine import learning_rate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", [None, "proxy", "proxy_long", "proxy_budget", "smoke", "coco"])
def test_base_config_loads_with_every_profile(profile):
    cfg = load_config(ROOT / "experiments/base.yaml", profile=profile)
    assert isinstance(cfg, Config)
    # The paper's settings hold unless a profile changes them.
    assert cfg.test.nms_iou == 0.6 and cfg.test.score_thr == 0.05 and cfg.test.max_per_img == 100
    assert (cfg.criterion.topk, cfg.criterion.alpha, cfg.criterion.beta) == (13, 1.0, 6.0)
    if profile not in ("proxy", "proxy_long", "proxy_budget", "smoke"):
        assert cfg.train.lr == 0.01 and cfg.train.batch_size == 16 and cfg.train.lr_steps == (8, 11)
        assert cfg.data.img_scale == (1333, 800) and cfg.model.backbone.depth == 50


def test_proxy_long_is_the_proxy_with_the_doubled_schedule():
    proxy, long = (load_config(ROOT / "experiments/base.yaml", profile=p) for p in ("proxy", "proxy_long"))
    assert (long.train.epochs, long.train.lr_steps, long.criterion.warmup_epochs) == (32, (24, 30), 12)
    doubled = load_config(ROOT / "experiments/base.yaml", profile="proxy",
                          overrides=["train.epochs=32", "train.lr_steps=[24,30]", "criterion.warmup_epochs=12"])
    assert long == doubled and long != proxy


def test_profile_extends_merges_over_its_parent_and_errors_name_the_chain(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train: {lr: 0.1, epochs: 5}\nprofiles:\n"
                 "  a: {train: {lr: 0.2, batch_size: 4}, model: {num_classes: 3}}\n"
                 "  b: {extends: a, train: {lr: 0.3}}\n"
                 "  c: {extends: b, model: {num_classes: 7}}\n")
    c = load_config(f, profile="c")  # c over b over a over the file's own values, key by key
    assert (c.train.lr, c.train.batch_size, c.train.epochs, c.model.num_classes) == (0.3, 4, 5, 7)
    b = load_config(f, profile="b")
    assert (b.train.lr, b.train.batch_size, b.model.num_classes) == (0.3, 4, 3)
    cases = {"  x: {extends: nope}\n": r"p\.yaml: profiles\.x\.extends: unknown profile 'nope' \(expected one of: x\)",
             "  x: {extends: y}\n  y: {extends: x}\n": r"profiles\.y\.extends: cycle x -> y -> x",
             "  x: {extends: 3}\n": r"profiles\.x\.extends: expected a profile name \(got 3\)",
             "  x: 5\n": r"profiles\.x: expected a mapping"}
    for text, message in cases.items():
        f.write_text("profiles:\n" + text)
        with pytest.raises(ConfigError, match=message):
            load_config(f, profile="x")


def test_roundtrip_to_dict():
    cfg = load_config(ROOT / "experiments/base.yaml", profile="proxy")
    assert build_config(to_dict(cfg), "x") == cfg


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.learning_rate: unknown key") as e:
        load_config(f)
    f.write_text("model:\n  head:\n    typ: parallel\n")
    with pytest.raises(ConfigError, match=r"model\.head\.typ: unknown key; did you mean 'type'") as e:
        load_config(f)
    assert "bad.yaml" in str(e.value)


def test_wrong_types_and_values(tmp_path):
    f = tmp_path / "bad.yaml"
    for text, pattern in [
        ("train:\n  epochs: ten\n", r"train\.epochs: got 'ten' \(expected an integer\)"),
        ("criterion:\n  assigner: atts\n", r"criterion\.assigner: unknown value 'atts' \(expected one of: tal, atss, max_iou, center_sampling, fovea\)"),
        ("model:\n  head: 3\n", r"model\.head: got 3 \(expected a mapping"),
        ("train:\n  lr_steps: 8\n", r"train\.lr_steps: got 8 \(expected a list of int\)"),
        ("train: [1, 2\n", r"invalid YAML"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            load_config(f)


def test_overrides_profiles_and_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  lr: 0.5\n  epochs: 3\nprofiles:\n  p:\n    train: {epochs: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.lr, cfg.train.epochs) == (0.5, 5)
    cfg = load_config(tmp_path / "b.yaml", profile="p", overrides=["train.lr=0.25", "model.head.type=parallel"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.head.type) == (0.25, 7, "parallel")
    with pytest.raises(ConfigError, match="unknown profile 'q'"):
        load_config(tmp_path / "b.yaml", profile="q")
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'; did you mean 'lr'"):
        load_config(tmp_path / "b.yaml", overrides=["train.lrr=1"])
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "b.yaml")


def test_base_is_found_beside_the_file_then_in_the_project(tmp_path):
    """A config copied out of the project keeps `base: base.yaml`: the project's experiments/
    file is used unless one of that name stands beside the copy; an absolute base is used as is."""
    (tmp_path / "mine.yaml").write_text("base: base.yaml\ntest:\n  nms_iou: 0.5\n")
    cfg = load_config(tmp_path / "mine.yaml", profile="proxy")
    assert (cfg.test.nms_iou, cfg.model.backbone.depth, cfg.train.lr) == (0.5, 18, 0.002)  # the project's proxy
    (tmp_path / "base.yaml").write_text(f"base: {ROOT / 'experiments/base.yaml'}\ntrain:\n  weight_decay: 0.5\n")
    assert load_config(tmp_path / "mine.yaml").train.weight_decay == 0.5  # the one beside it wins
    (tmp_path / "mine.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "mine.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'mine.yaml'}: base: 'nowhere.yaml' not found (tried "
                                   f"{tmp_path / 'nowhere.yaml'}, {ROOT / 'experiments/nowhere.yaml'};")
    (tmp_path / "mine.yaml").write_text(f"base: {tmp_path / 'gone.yaml'}\n")
    with pytest.raises(ConfigError, match=rf"base: '{tmp_path / 'gone.yaml'}' not found \(tried {tmp_path / 'gone.yaml'};"):
        load_config(tmp_path / "mine.yaml")


def test_learning_rate_schedule_hand_values():
    cfg = build_config({"train": {"lr": 0.01, "batch_size": 4, "base_batch_size": 16, "warmup_iters": 500, "warmup_ratio": 0.001, "lr_steps": [8, 11]}}, "x")
    base = 0.01 * 4 / 16  # linear scaling rule
    assert learning_rate(cfg, 0, 0) == pytest.approx(base * 0.001)
    assert learning_rate(cfg, 0, 250) == pytest.approx(base * (0.001 + 0.999 * 0.5))
    assert learning_rate(cfg, 1, 500) == pytest.approx(base)
    assert learning_rate(cfg, 7, 10_000) == pytest.approx(base)
    assert learning_rate(cfg, 8, 10_000) == pytest.approx(base * 0.1)
    assert learning_rate(cfg, 11, 10_000) == pytest.approx(base * 0.01)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_budget_schedules_decay_to_zero_by_hand_values(schedule):
    cfg = build_config({"train": {"lr": 0.01, "batch_size": 16, "epochs": 4, "warmup_iters": 10, "warmup_ratio": 0.0,
                                  "lr_schedule": schedule, "lr_steps": [1, 2]}}, "x")
    shape = {"linear": lambda p: 1 - p, "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p))}[schedule]
    # progress = (epoch + fraction) / epochs; lr_steps do not act
    assert learning_rate(cfg, 0, 5, 0.25) == pytest.approx(0.01 * 0.5 * shape(0.0625))  # inside the warm-up
    assert learning_rate(cfg, 1, 100) == pytest.approx(0.01 * shape(0.25))
    assert learning_rate(cfg, 2, 150, 0.5) == pytest.approx(0.01 * shape(0.625))
    assert learning_rate(cfg, 3, 200, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert shape(0.25) == pytest.approx({"linear": 0.75, "cosine": 0.8535534}[schedule])
