"""Every grid file in experiments/ loads and expands; invalid grids fail naming file and key."""
from pathlib import Path

import pytest

from orchestration.grid import expand_grid, load_grid
from tood.config import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
GRIDS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if p.name != "base.yaml")


def test_there_are_grids():
    assert {p.stem for p in GRIDS} >= {"smoke", "table1_head", "table2_assign", "topm", "table4_alpha_beta", "table6_alignment"}


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
@pytest.mark.parametrize("profile", ["proxy", "coco"])
def test_every_grid_expands(path, profile):
    grid, trials = expand_grid(path, profile=profile)
    assert len(trials) == len(grid.rows) * len(grid.seeds)
    assert path.read_text().startswith("#") and "tood-ablate run" in path.read_text().split("\n\n")[0]
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    for t in trials:
        assert t.config["train"]["seed"] == t.seed


def test_factors_reach_the_config():
    _, trials = expand_grid(EXPERIMENTS / "table4_alpha_beta.yaml", profile="proxy", seeds=[0])
    pairs = [(t.config["criterion"]["alpha"], t.config["criterion"]["beta"]) for t in trials]
    assert pairs == [(0.5, 2.0), (0.5, 4.0), (0.5, 6.0), (1.0, 6.0), (1.0, 8.0), (1.5, 8.0)]
    _, trials = expand_grid(EXPERIMENTS / "table6_alignment.yaml", profile="proxy", seeds=[0])
    heads = [(t.config["model"]["head"]["type"], t.config["model"]["head"]["stacked_convs"], t.config["criterion"]["assigner"]) for t in trials]
    assert heads == [("parallel", 4, "atss"), ("t_head", 6, "atss"), ("parallel", 4, "tal"), ("t_head", 6, "tal")]


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("study: s\ntable: smoke\nbase: {base}\nrows: []\n", r"bad\.yaml: rows: empty grid"),
        ("study: s\ntable: smoke\nbase: {base}\nrows:\n  - label: a\n    factors: {{assigner: atts}}\n",
         r"bad\.yaml: rows\[0\]\.factors\.assigner: unknown value 'atts' \(expected one of: tal, atss, max_iou, center_sampling\)"),
        ("study: s\ntable: smoke\nbase: {base}\nrows:\n  - label: a\n    factors: {{hed: parallel}}\n", r"rows\[0\]\.factors\.hed: unknown factor"),
        ("study: s\ntable: smoke\nbase: {base}\nrows:\n  - label: a\n    factors: {{topk: nine}}\n", r"rows\[0\]\.factors\.topk: unknown value 'nine' \(expected an integer\)"),
        ("study: s\ntable: smoke\nbase: {base}\nseeds: [a]\nrows:\n  - label: a\n", r"bad\.yaml: seeds: got \['a'\]"),
        ("study: s\ntable: tabel9\nbase: {base}\nrows:\n  - label: a\n", r"bad\.yaml: table: unknown value 'tabel9'"),
        ("study: s\ntable: smoke\nbase: {base}\nrows:\n  - label: a\n  - label: a\n", r"rows\[1\]\.label: duplicate label"),
        ("study: s\ntable: smoke\nbase: {base}\nrows:\n  - label: a\n    set: {{train.lrr: 1}}\n", r"bad\.yaml: rows\[0\] \(a\): override train\.lrr: unknown key 'train\.lrr'"),
        ("study: s\ntable: smoke\nbase: {base}\ngrids: 1\nrows:\n  - label: a\n", r"bad\.yaml: grids: unknown key"),
    ],
)
def test_invalid_grids_fail_before_anything_starts(tmp_path, text, pattern):
    f = tmp_path / "bad.yaml"
    f.write_text(text.format(base=EXPERIMENTS / "base.yaml"))
    with pytest.raises(ConfigError, match=pattern):
        expand_grid(f)
