"""Every grid file in experiments/ loads and expands; invalid grids fail naming the file and the key."""
from pathlib import Path

import pytest
import yaml

from orchestration.grid import FACTORS, expand_grid, load_grid, resolved_grid
from tood.config import ConfigError, build_config, flatten, load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
GRIDS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p.name != "base.yaml")
BASE = EXPERIMENTS / "base.yaml"


def test_every_paper_study_has_a_grid():
    assert {p.stem for p in GRIDS} >= {"smoke", "demo", "table1_head", "table2_assign", "table3_tood", "topm", "table4_alpha_beta", "table6_alignment"}


def test_base_is_a_plain_config():
    for profile in ("proxy", "proxy_long", "smoke", "coco"):
        cfg = load_config(BASE, profile=profile)
        assert cfg.model.head.type == "t_head" and cfg.criterion.assigner == "tal"


@pytest.mark.parametrize("profile", ["proxy", "proxy_long", "smoke", "coco"])
@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_every_grid_expands(path, profile):
    text = path.read_text()
    header = text.split("\nstudy:")[0]
    assert text.startswith("#") and f"tood-ablate run experiments/{path.name}" in header
    grid = load_grid(path)
    trials = expand_grid(path, profile=profile)
    assert len(trials) == len(grid.rows) * len(grid.seeds)
    assert len({t.name for t in trials}) == len(trials)
    assert [(t.row_index, t.seed) for t in trials] == [(i, s) for i in range(len(grid.rows)) for s in grid.seeds]
    for t in trials:
        cfg = build_config(t.config, t.name)  # the resolved dict is a valid config again
        assert cfg.train.seed == t.seed and Path(cfg.data.root).is_absolute()
        assert t.study == grid.study and t.table == grid.table and t.profile == profile
        assert t.name.endswith(f"seed={t.seed}")


def _head(trials):
    return [(t.config["model"]["head"]["type"], t.config["model"]["head"]["stacked_convs"], t.config["model"]["head"]["centerness"],
             t.config["model"]["head"]["anchor_type"], t.config["criterion"]["assigner"]) for t in trials]


def test_table1_detectors_and_heads():
    trials = expand_grid(EXPERIMENTS / "table1_head.yaml", seeds=[0])
    assert _head(trials) == [
        ("parallel", 4, False, "anchor_free", "fovea"), ("t_head", 6, False, "anchor_free", "fovea"),
        ("parallel", 4, True, "anchor_free", "atss"), ("t_head", 6, False, "anchor_free", "atss"),
        ("parallel", 4, True, "anchor_based", "atss"), ("t_head", 6, False, "anchor_based", "atss"),
        ("parallel", 4, True, "anchor_free", "center_sampling"), ("t_head", 6, False, "anchor_free", "center_sampling"),
    ]
    assert trials[2].paper == {"AP": 39.2, "AP50": 57.4, "AP75": 42.2}


def test_table2_rows_read_as_documented():
    trials = expand_grid(EXPERIMENTS / "table2_assign.yaml", seeds=[0])
    rows = {t.row_label: t.config for t in trials}
    assert [(c["criterion"]["assigner"], c["model"]["head"]["centerness"], c["criterion"]["cls_target"]) for c in rows.values()] == [
        ("max_iou", False, "auto"), ("center_sampling", False, "auto"), ("center_sampling", True, "auto"),
        ("atss", True, "auto"), ("atss", False, "soft"), ("tal", False, "auto"), ("tal", False, "auto"),
    ]
    assert rows["ATSS + QFL"]["criterion"]["box_weight"] == "max_score"  # the GFL recipe
    assert {c["criterion"]["box_weight"] for label, c in rows.items() if label != "ATSS + QFL"} == {"auto"}
    assert rows["TAL + TAP"]["model"]["head"]["type"] == "t_head" and rows["TAL"]["model"]["head"]["type"] == "parallel"
    assert [t.paper["AP"] for t in trials] == [36.5, 37.3, 37.4, 39.2, 39.9, 40.3, 42.5]


def test_table4_topm_table6_factors_reach_the_config():
    trials = expand_grid(EXPERIMENTS / "table4_alpha_beta.yaml", seeds=[0])
    assert [(t.config["criterion"]["alpha"], t.config["criterion"]["beta"]) for t in trials] == [
        (0.5, 2.0), (0.5, 4.0), (0.5, 6.0), (1.0, 6.0), (1.0, 8.0), (1.5, 8.0)]
    assert [t.paper["AP75"] for t in trials] == [46.1, 45.8, 45.1, 46.4, 46.0, 44.7]
    trials = expand_grid(EXPERIMENTS / "topm.yaml", seeds=[0])
    assert [t.config["criterion"]["topk"] for t in trials] == [5, 9, 13, 17, 21]
    assert [t.paper for t in trials] == [{}, {}, {"AP": 42.5}, {}, {}]
    trials = expand_grid(EXPERIMENTS / "table6_alignment.yaml", seeds=[0])
    assert [h[:3] + h[4:] for h in _head(trials)] == [
        ("parallel", 4, True, "atss"), ("t_head", 6, False, "atss"), ("parallel", 4, False, "tal"), ("t_head", 6, False, "tal")]
    assert [t.paper["n_redundant"] for t in trials] == [25428, 21838, 15927, 15242]
    assert trials[3].name == "head=t_head,assigner=tal,seed=0"


def test_smoke_grid_is_tiny():
    trials = expand_grid(EXPERIMENTS / "smoke.yaml")
    assert len(trials) == 2 and {t.seed for t in trials} == {0}
    for t in trials:
        assert t.config["train"]["epochs"] <= 2 and t.config["data"]["synthetic"]["n_train"] <= 64


def _grid(tmp_path, body: str, name: str = "bad.yaml") -> Path:
    f = tmp_path / name
    f.write_text(f"study: s\ntable: smoke\nbase: {BASE}\n" + body)
    return f


def test_precedence_factors_then_set_then_overrides(tmp_path):
    f = _grid(tmp_path, "seeds: [3, 1]\nrows:\n  - label: a\n    factors: {centerness: false, head: parallel, topk: 7}\n"
                        "    set: {criterion.topk: 11, train.epochs: 5}\n")
    trials = expand_grid(f, seeds=None, overrides={"train.epochs": 1})
    c = trials[0].config
    # head: parallel implies centerness true; the specific factor wins whatever the order in the row
    assert c["model"]["head"]["centerness"] is False and c["model"]["head"]["type"] == "parallel"
    assert c["criterion"]["topk"] == 11 and c["train"]["epochs"] == 1
    assert [t.seed for t in trials] == [3, 1] and trials[0].name == "centerness=False,head=parallel,topk=7,seed=3"
    assert [t.seed for t in expand_grid(f, seeds=[5])] == [5]


def test_rows_with_the_same_factors_are_told_apart_by_label(tmp_path):
    f = _grid(tmp_path, "rows:\n  - label: short\n    factors: {head: parallel}\n    set: {train.epochs: 1}\n"
                        "  - label: long\n    factors: {head: parallel}\n  - label: plain\n")
    assert [t.name for t in expand_grid(f)] == ["row=short,head=parallel,seed=0", "row=long,head=parallel,seed=0", "row=plain,seed=0"]


def test_resolved_grid_records_the_launch(tmp_path):
    f = _grid(tmp_path, "seeds: [0, 1, 2]\nrows:\n  - label: a\n    factors: {head: t_head}\n    set: {train.epochs: 3}\n")
    raw = resolved_grid(load_grid(f), [1], {"train.lr": 0.5})
    assert raw["seeds"] == [1] and raw["rows"][0]["set"] == {"train.epochs": 3, "train.lr": 0.5}
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(raw))
    assert [(t.seed, t.config["train"]["lr"], t.config["train"]["epochs"]) for t in expand_grid(again)] == [(1, 0.5, 3)]


def test_factor_values_are_type_checked():
    assert FACTORS["alpha"][1](1) == {"criterion.alpha": 1.0}
    assert FACTORS["topk"][1](9.0) is None and FACTORS["topk"][1](True) is None
    assert FACTORS["tap"][1](False) == {"model.head.alignment_map": False, "model.head.offsets": False}
    assert FACTORS["tap"][1]("no") is None and FACTORS["centerness"][1](0) is None


@pytest.mark.parametrize(
    "body,pattern",
    [
        ("rows: []\n", r"bad\.yaml: rows: empty grid"),
        ("rows:\n  - label: a\n    factors: {assigner: atts}\n",
         r"bad\.yaml: rows\[0\]\.factors\.assigner: unknown value 'atts' \(expected one of: tal, atss, max_iou, center_sampling, fovea\)"),
        ("rows:\n  - label: a\n  - label: b\n    factors: {hed: parallel}\n", r"bad\.yaml: rows\[1\]\.factors\.hed: unknown factor \(expected one of: detector, head"),
        ("rows:\n  - label: a\n    factors: {topk: nine}\n", r"bad\.yaml: rows\[0\]\.factors\.topk: unknown value 'nine' \(expected an integer\)"),
        ("rows:\n  - label: a\n    factors: {alpha: true}\n", r"rows\[0\]\.factors\.alpha: unknown value True \(expected a number\)"),
        ("rows:\n  - label: a\n    factors: {tap: 1}\n", r"rows\[0\]\.factors\.tap: unknown value 1 \(expected true or false\)"),
        ("rows:\n  - label: a\n    factors: [head, parallel]\n", r"rows\[0\]\.factors: got \['head', 'parallel'\] \(expected a mapping"),
        ("seeds: [a]\nrows:\n  - label: a\n", r"bad\.yaml: seeds: got \['a'\] \(expected a non-empty list of distinct non-negative integers\)"),
        ("seeds: [0, 0]\nrows:\n  - label: a\n", r"bad\.yaml: seeds: got \[0, 0\]"),
        ("seeds: []\nrows:\n  - label: a\n", r"bad\.yaml: seeds: got \[\]"),
        ("rows:\n  - label: a\n  - label: a\n", r"bad\.yaml: rows\[1\]\.label: duplicate label 'a'"),
        ("rows:\n  - factors: {head: parallel}\n", r"bad\.yaml: rows\[0\]\.label: got None \(expected a non-empty string\)"),
        ("rows:\n  - label: a\n    set: {train.lrr: 1}\n", r"bad\.yaml: rows\[0\]\.set: override train\.lrr: unknown key 'train\.lrr'; did you mean 'lr'"),
        ("rows:\n  - label: a\n    set: {train.epochs: many}\n", r"bad\.yaml: rows\[0\]\.set: train\.epochs: got 'many' \(expected an integer\)"),
        ("rows:\n  - label: a\n    paper: {AP: high}\n", r"bad\.yaml: rows\[0\]\.paper\.AP: got 'high' \(expected a number\)"),
        ("rows:\n  - label: a\n    paper: {mAP: 40}\n", r"bad\.yaml: rows\[0\]\.paper\.mAP: unknown metric"),
        ("rows:\n  - label: a\n    seed: 1\n", r"bad\.yaml: rows\[0\]\.seed: unknown key \(expected one of: label, factors, set, paper\)"),
        ("grids: 1\nrows:\n  - label: a\n", r"bad\.yaml: grids: unknown key \(expected one of: study, table, base, seeds, rows, claim\)"),
        ("claim: {shape: equivalance, delta: 1}\nrows:\n  - label: a\n",
         r"bad\.yaml: claim\.shape: unknown value 'equivalance' \(expected one of: direction, margin, equivalence\)"),
        ("claim: {shape: equivalence}\nrows:\n  - label: a\n", r"bad\.yaml: claim\.delta: got 0\.0 \(expected a number >= 0"),
        ("claim: {shape: margin, delta: -1, why: x}\nrows:\n  - label: a\n", r"bad\.yaml: claim\.delta: got -1"),
        ("claim: {shape: margin, delta: 1}\nrows:\n  - label: a\n", r"bad\.yaml: claim\.why: missing"),
        ("claim: {shape: direction, bound: 1}\nrows:\n  - label: a\n", r"bad\.yaml: claim: got .* \(expected a mapping with keys shape, delta, why\)"),
    ],
)
def test_invalid_grids_fail_naming_file_and_key(tmp_path, body, pattern):
    with pytest.raises(ConfigError, match=pattern):
        expand_grid(_grid(tmp_path, body))


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("study: s\ntable: tabel9\nbase: base.yaml\nrows:\n  - label: a\n", r"bad\.yaml: table: unknown value 'tabel9' \(expected one of: table1, table2, table3, topm, table4, table6, smoke\)"),
        ("study: s\ntable: smoke\nrows:\n  - label: a\n", r"bad\.yaml: base: missing"),
        ("study: a/b\ntable: smoke\nbase: base.yaml\nrows:\n  - label: a\n", r"bad\.yaml: study: got 'a/b'"),
        ("study: s\ntable: smoke\nbase: nowhere.yaml\nrows:\n  - label: a\n",
         r"bad\.yaml: base: 'nowhere\.yaml' not found \(tried .*nowhere\.yaml, .*experiments/nowhere\.yaml; expected a config file"),
        ("- just\n- a list\n", r"bad\.yaml: top level must be a mapping"),
        ("study: [unclosed\n", r"bad\.yaml: invalid YAML"),
    ],
)
def test_invalid_grid_files(tmp_path, text, pattern):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        expand_grid(f)


def test_bad_profile_seeds_and_overrides_are_named(tmp_path):
    f = EXPERIMENTS / "smoke.yaml"
    with pytest.raises(ConfigError, match=r"smoke\.yaml: base base\.yaml \(profile gpu\): profiles: unknown profile 'gpu'"):
        expand_grid(f, profile="gpu")
    with pytest.raises(ConfigError, match=r"--seeds: got \[-1\]"):
        expand_grid(f, seeds=[-1])
    with pytest.raises(ConfigError, match=r"--set: override model\.hed\.type: unknown key 'model\.hed'"):
        expand_grid(f, overrides={"model.hed.type": "t_head"})


def test_trial_config_flattens_to_mlflow_params():
    t = expand_grid(EXPERIMENTS / "table6_alignment.yaml", seeds=[1])[1]
    params = flatten(t.config)
    assert params["model.head.type"] == "t_head" and params["train.seed"] == 1 and params["criterion.assigner"] == "atss"
