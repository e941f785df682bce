"""Shared training prefixes: prefix keys, bit-identical branching, the runtime lease, the plan.

Bit identity is checked on the tiny config of tests/conftest.py with one torch thread and
``torch.use_deterministic_algorithms(True)`` (the :func:`deterministic` fixture): a CPU
training is then repeatable on one machine, also under load (a different thread count may
change the order of float reductions). The launch tests at the end run the ``tood-ablate``
driver on local Ray (slow).
"""
from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestration.grid import expand, expand_grid, load_grid
from orchestration.launch import suite_grids
from orchestration.payload import TrialPayload
from orchestration.suite import estimated_cost, prefix_epochs, prefix_key, schedule, share_prefixes, trial_key, unique_trials
from tests.conftest import ROOT, tiny_config
from tests.test_orchestration import SMOKE, launch  # noqa: F401  (fixture)
from tests.test_suite import _describe, _launch_runs
from tood.build import build_criterion, unused_criterion_fields
from tood.checkpoint import load_checkpoint
from tood.config import ConfigError, build_config, to_dict
from tood.engine import train

TIMING = ("epoch_time_s", "eval_time_s")  # wall times: the only numbers a replay does not repeat
PREFIX = 2  # branch epoch of the tiny runs (criterion.warmup_epochs)
ROWS = {  # TOOD's rows that differ after the prefix only
    "alpha_beta_topk": ["criterion.alpha=0.5", "criterion.beta=4.0", "criterion.topk=5"],
    "atss": ["criterion.assigner=atss"],  # T-head + ATSS: its whole schedule is TAL's warm-up phase
}


@pytest.fixture
def deterministic():
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(strict)


def _tiny(data: Path, *overrides: str):
    return tiny_config(data, "train.epochs=3", f"criterion.warmup_epochs={PREFIX}", *overrides)


def _train(cfg, work: Path, resume=False, keep: dict | None = None):
    """``train`` with every epoch's checkpoint state kept in ``keep`` (epoch -> state)."""
    def on_epoch_end(end):
        if keep is not None:
            keep[end.epoch] = torch.load(end.checkpoint, weights_only=False)
    return train(cfg, work, resume=resume, progress=False, on_epoch_end=on_epoch_end)


def _same_tensors(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


def _same_numbers(a: dict, b: dict) -> bool:
    """Equal metric dicts, timing aside; NaN equals NaN (APl without large objects)."""
    keys = set(a) - set(TIMING)
    return keys == set(b) - set(TIMING) and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in keys)


# ------------------------------------------------------------------ bit identity


@pytest.mark.parametrize("row", sorted(ROWS))
def test_branched_trial_ends_bit_identical_to_training_from_scratch(tiny_data, tmp_path, deterministic, row):
    tood, other = _tiny(tiny_data), _tiny(tiny_data, *ROWS[row])
    assert prefix_key(to_dict(tood), PREFIX) == prefix_key(to_dict(other), PREFIX)
    assert trial_key(to_dict(tood)) != trial_key(to_dict(other))
    states: dict[int, dict] = {}
    _train(tood, tmp_path / "tood", keep=states)
    prefix = tmp_path / "prefix.pt"
    torch.save(states[PREFIX], prefix)
    scratch = _train(other, tmp_path / "scratch")
    branched = _train(other, tmp_path / "branched", resume=prefix)
    a, b = load_checkpoint(tmp_path / "scratch/last.pt"), load_checkpoint(tmp_path / "branched/last.pt")
    assert _same_tensors(a["model"], b["model"]) == []
    assert a["epoch"] == b["epoch"] == 3 and a["iteration"] == b["iteration"]
    moments = [(name, x, y) for p, q in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
               for name, x, y in ((n, p[n], q[n]) for n in p)]
    assert moments and all(torch.equal(x, y) for _, x, y in moments)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert len(scratch.history) == len(branched.history) == 3
    assert all(_same_numbers(x, y) for x, y in zip(scratch.history, branched.history))
    assert _same_numbers(scratch.metrics, branched.metrics) and "AP" in scratch.metrics
    # the branch trained epoch 3 only: its first two epochs are the prefix's, timing included
    assert branched.history[:PREFIX] == states[PREFIX]["history"]


def test_a_row_that_differs_inside_the_prefix_does_not_share_it(tiny_data, tmp_path, deterministic):
    """ATSS's top-k acts in TAL's warm-up, and so does the learning rate: other prefix keys, and
    indeed other weights after the prefix (sharing the prefix would have been wrong)."""
    base = _tiny(tiny_data)
    for override in ("criterion.atss_topk=5", "train.lr=0.02"):
        changed = _tiny(tiny_data, override)
        assert prefix_key(to_dict(changed), PREFIX) != prefix_key(to_dict(base), PREFIX), override
        kept_a, kept_b = {}, {}
        _train(_tiny(tiny_data, f"train.epochs={PREFIX}"), tmp_path / "a", keep=kept_a)
        _train(_tiny(tiny_data, override, f"train.epochs={PREFIX}"), tmp_path / f"b{override}", keep=kept_b)
        assert _same_tensors(kept_a[PREFIX]["model"], kept_b[PREFIX]["model"]), override
        shutil.rmtree(tmp_path / "a")


def test_evaluation_changes_no_weight_but_draws_from_the_torch_generator(tiny_data, tmp_path, deterministic):
    """Evaluating every epoch or only at the end gives the same weights at every epoch. The
    DataLoader of an evaluation draws its base seed from torch's global generator, so the RNG
    state in a checkpoint depends on the evaluating epochs: those inside the prefix are in the
    prefix key (their AP is in the copied history anyway), later ones are not."""
    every, end = {}, {}
    _train(_tiny(tiny_data, "train.eval_every=1"), tmp_path / "every", keep=every)
    _train(_tiny(tiny_data, "train.eval_every=3"), tmp_path / "end", keep=end)
    for epoch in (1, 2, 3):
        assert _same_tensors(every[epoch]["model"], end[epoch]["model"]) == [], epoch
    assert not torch.equal(every[PREFIX]["rng"]["torch"], end[PREFIX]["rng"]["torch"])
    assert ("epoch_AP" in every[PREFIX]["history"][-1]) and ("epoch_AP" not in end[PREFIX]["history"][-1])
    keys = {e: prefix_key(to_dict(_tiny(tiny_data, f"train.eval_every={e}")), PREFIX) for e in (1, 2, 3, 4)}
    assert keys[1] != keys[2] != keys[3] and keys[3] == keys[4]  # 3 and 4: no evaluation inside epochs 1-2


# ------------------------------------------------------------------ what the key sees


def test_prefix_key_changes_with_prefix_values_and_not_with_later_ones():
    cfg = expand_grid(SMOKE, seeds=[0])[1].config  # T-head + TAL
    cfg["train"].update(epochs=6, lr_steps=[4, 5], eval_every=4)
    cfg["criterion"]["warmup_epochs"] = 3
    key = prefix_key(cfg, 3)
    assert prefix_epochs(cfg) == 3 and len(key) == 16 and key == prefix_key(copy.deepcopy(cfg), 3)
    later = {("criterion", "alpha"): 0.5, ("criterion", "beta"): 4.0, ("criterion", "topk"): 5,
             ("criterion", "conflict"): "min_area", ("criterion", "warmup_epochs"): 4, ("train", "epochs"): 9,
             ("train", "lr_steps"): [3, 8], ("train", "lr_gamma"): 0.5, ("train", "eval_every"): 5,
             ("test", "nms_iou"): 0.5, ("train", "workers"): 3, ("name",): "x"}
    for path, value in later.items():
        changed = copy.deepcopy(cfg)
        node = changed
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert prefix_key(changed, 3) == key, f"{'.'.join(path)} acts after the prefix"
        assert trial_key(changed) != trial_key(cfg) or path in (("train", "workers"), ("name",))
    inside = {("criterion", "atss_topk"): 5, ("criterion", "reg_weight"): 1.0, ("criterion", "assigner"): "max_iou",
              ("train", "lr"): 0.003, ("train", "seed"): 1, ("train", "warmup_iters"): 7, ("train", "batch_size"): 4,
              ("train", "lr_steps"): [2, 5], ("train", "eval_every"): 2, ("train", "weight_decay"): 0.01,
              ("train", "max_iters_per_epoch"): 5, ("model", "head", "feat_channels"): 32, ("data", "flip_prob"): 0.0,
              ("data", "synthetic", "seed"): 3}
    for path, value in inside.items():
        changed = copy.deepcopy(cfg)
        node = changed
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        assert prefix_key(changed, 3) != key, f"{'.'.join(path)} acts inside the prefix"
    assert prefix_key(cfg, 4) != key and prefix_key(cfg, 6) is None and prefix_key(cfg, 0) is None
    # with an evaluation inside the prefix (eval_every 2: epoch 2) the test settings count too
    cfg["train"]["eval_every"] = 2
    with_eval = copy.deepcopy(cfg)
    with_eval["test"]["nms_iou"] = 0.5
    assert prefix_key(with_eval, 3) != prefix_key(cfg, 3)


def test_a_budget_schedule_keys_the_length_and_not_the_unread_steps():
    """Under linear / cosine the lr of every iteration depends on train.epochs, so the prefix key
    sees the length; lr_steps and lr_gamma are not read, so neither key sees them; the default
    step schedule leaves both keys as they were before the field existed."""
    cfg = expand_grid(SMOKE, seeds=[0])[1].config
    cfg["train"].update(epochs=6, lr_steps=[4, 5])
    cfg["criterion"]["warmup_epochs"] = 3
    step = copy.deepcopy(cfg)
    step["train"]["lr_schedule"] = "step"
    no_field = copy.deepcopy(cfg)
    no_field["train"].pop("lr_schedule", None)
    assert trial_key(step) == trial_key(no_field) and prefix_key(step, 3) == prefix_key(no_field, 3)
    for schedule in ("linear", "cosine"):
        budget = copy.deepcopy(cfg)
        budget["train"]["lr_schedule"] = schedule
        longer = copy.deepcopy(budget)
        longer["train"]["epochs"] = 9
        assert prefix_key(longer, 3) != prefix_key(budget, 3) != prefix_key(step, 3)
        other_steps = copy.deepcopy(budget)
        other_steps["train"].update(lr_steps=[2], lr_gamma=0.5)
        assert trial_key(other_steps) == trial_key(budget) != trial_key(step)
        assert prefix_key(other_steps, 3) == prefix_key(budget, 3)


def test_one_prefix_key_means_one_built_criterion_over_the_prefix():
    """Every pair of the suite's trainings with one prefix key builds criteria whose phases over
    the prefix are equal field by field (assigner settings included), and every distinct phase
    description has its own key: the key's criterion view mirrors tood.build.build_criterion."""
    configs = {}
    for profile in ("proxy", "smoke"):
        for path in suite_grids(ROOT / "experiments"):
            for spec in expand(load_grid(path), profile):
                configs.setdefault(trial_key(spec.config), spec.config)
    by_prefix = defaultdict(list)
    for cfg in configs.values():
        if prefix_epochs(cfg):
            by_prefix[prefix_key(cfg, prefix_epochs(cfg))].append(cfg)
    shared = [group for group in by_prefix.values() if len(group) > 1]
    assert len(shared) >= 8
    for group in shared:
        epochs = prefix_epochs(group[0])
        phases = [[_describe(build_criterion(build_config(c, "x")).phase(e)) for e in range(epochs)] for c in group]
        assert all(p == phases[0] for p in phases)
        views = [{k: v for k, v in c.items() if k not in ("criterion", "name")} for c in group]
        for v in views:  # nothing else differs but the later-only train values
            for name in ("epochs", "lr_steps", "workers"):
                v["train"].pop(name)
        assert all(v == views[0] for v in views)
    assert set(unused_criterion_fields("atss")) >= {"alpha", "beta", "topk", "warmup_epochs"}


# ------------------------------------------------------------------ the suite's counts


def _brute_force_saved(specs) -> tuple[int, int, int]:
    """(distinct trainings, trial-epochs, trial-epochs a shared prefix saves) of expanded specs,
    counted without orchestration.suite's prefix code: trainings are alike over the warm-up when
    their seed, model, data and train settings before the first lr step agree and both train the
    ATSS warm-up phase (TAL inside its warm-up, or ATSS with focal loss and centerness weights)."""
    trainings = {}
    for spec in (s for ss in specs for s in ss):
        trainings.setdefault(trial_key(spec.config), spec.config)
    classes = defaultdict(list)
    for cfg in trainings.values():
        c, t, p = cfg["criterion"], cfg["train"], cfg["criterion"]["warmup_epochs"]
        warm = c["assigner"] == "tal" or (c["assigner"] == "atss" and c["cls_target"] in ("auto", "hard")
                                          and c["box_weight"] in ("auto", "centerness"))
        if not warm:
            continue
        assert min(t["lr_steps"]) >= p and t["eval_every"] > 0
        train = {k: v for k, v in t.items() if k not in ("epochs", "lr_steps", "workers")}
        model = copy.deepcopy(cfg["model"])
        model["backbone"].pop("pretrained")  # a recipe describes the file
        signature = json.dumps([model, cfg["data"] | {"root": None}, train, c["atss_topk"], c["reg_weight"], p], sort_keys=True)
        classes[signature].append(p)
    saved = sum(ps[0] * (len(ps) - 1) for ps in classes.values())
    return len(trainings), sum(c["train"]["epochs"] for c in trainings.values()), saved


@pytest.mark.parametrize("profile,saved,epochs", [("proxy", 210, 1296), ("proxy_long", 420, 2592)])
def test_plan_counts_of_the_paper_suite_agree_with_brute_force(tmp_path, profile, saved, epochs):
    from orchestration.plan import plan

    grids = suite_grids(ROOT / "experiments")
    p = plan(grids, profile, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}", slots=2)
    assert not (tmp_path / "none.db").exists()  # a dry run creates no store
    specs = [expand(load_grid(g), profile) for g in grids]
    distinct, total, brute_saved = _brute_force_saved(specs)
    assert (p["child_runs"], p["distinct_trainings"], p["to_train"], p["finished_in_store"]) == (118, distinct, distinct, 0)
    assert (distinct, total, brute_saved) == (81, epochs, saved)  # saved: 11 rows x 3 seeds of the T-head family ...
    assert p["trial_epochs"] == {"without_sharing": total, "with_sharing": total - saved, "saved": saved}
    assert len(p["shared_prefixes"]) == 8 and sum(len(g["trials"]) - 1 for g in p["shared_prefixes"]) == 35
    w = p["estimated_wall_s"]
    assert 0 < w["with_sharing"] < w["without_sharing"]
    off = plan(grids, profile, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}", share=False)
    assert off["shared_prefixes"] == [] and off["trial_epochs"]["with_sharing"] == total


def test_plan_command_prints_the_counts_and_writes_json(tmp_path, capsys):
    from orchestration.plan import main

    out = tmp_path / "plan.json"
    assert main(["--all", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--slots", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "child runs               118" in text and "distinct trainings       81" in text
    assert "8, 35 trainings branch from them: 210 trial-epochs not trained (16.2%) -> 1086 trial-epochs" in text
    assert json.loads(out.read_text())["trial_epochs"]["saved"] == 210
    with pytest.raises(ConfigError, match="give grid files or --all"):
        main([])


def test_share_prefixes_roles_costs_and_order(tmp_path):
    from tests.test_suite import _write_grid

    specs = [expand_grid(_write_grid(tmp_path, "a", ["parallel head + ATSS", "T-head + TAL"], seeds=(0, 1)),
                         overrides={"train.epochs": 3})]
    tal = [s for s in specs[0] if s.row_label == "T-head + TAL"]
    alpha = [copy.deepcopy(s) for s in tal]
    for s in alpha:
        s.config["criterion"]["alpha"], s.row_index, s.row_label = 0.5, 2, "alpha 0.5"
    specs[0] += alpha
    trials = schedule(unique_trials(specs), specs)
    groups = share_prefixes(trials, specs)
    assert len(groups) == 2 and all(g.epochs == 1 and len(g.trials) == 2 and g.saved_epochs == 1 for g in groups.values())
    order = schedule(trials, specs)
    spec = {t.key: specs[0][t.primary[1]] for t in order}
    got = [(spec[t.key].seed, t.role) for t in order]
    assert got == [(0, "producer"), (0, ""), (0, "branch"), (1, "producer"), (1, ""), (1, "branch")]
    for t in order:
        full = estimated_cost(spec[t.key].config)
        assert t.cost == (estimated_cost(spec[t.key].config, start=1) if t.role == "branch" else full)
    found = {next(iter(groups)): "/x.pt"}
    again = share_prefixes(trials, specs, found)
    assert again[next(iter(found))].branches == 2 and again[next(iter(found))].found == "/x.pt"


# ------------------------------------------------------------------ the runtime side (orchestration.prefix)


def _fake_checkpoint(path: Path, epoch: int, run_id: str) -> Path:
    """What Sharing reads of a checkpoint: epoch, history (epoch i's metrics at i) and the run that trained it."""
    history = [{"epoch": e, "loss_total": 1.0 / e, "epoch_time_s": 10.0 * e, "lr": 0.1} for e in range(1, epoch + 1)]
    torch.save({"epoch": epoch, "history": history, "extra": {"mlflow_run_id": run_id}, "model": {}}, path)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    from orchestration import prefix

    monkeypatch.setattr(prefix, "POLL_S", 0.05)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.create_experiment("tood-ablate/prefix")
    runs = [client.create_run(exp, run_name=n).info.run_id for n in ("a", "b", "c")]
    return client, runs, tmp_path / "prefixes"


def _sharing(client, run_id: str, folder: Path, found: Path | None = None):
    from orchestration.prefix import Sharing

    prefix = {"key": "k" * 16, "epochs": 2, "dir": str(folder), "found": found}
    return Sharing.of(TrialPayload("t" * 16, run_id, "t", {"train": {"epochs": 4}}, prefix=prefix), client)


def _in_thread(fn):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    thread.start()
    return thread, out


def _history(client, run_id: str, key: str = "loss_total") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_branches_wait_for_the_producer_and_copy_its_epochs(store, tmp_path):
    from orchestration.prefix_tags import PREFIX_CHECKPOINT_TAG, PREFIX_EPOCHS_TAG, PREFIX_FROM_TAG, PREFIX_KEY_TAG

    client, (a, b, _), folder = store
    producer, branch = _sharing(client, a, folder), _sharing(client, b, folder)
    assert producer.acquire(attempt=1, own_epoch=0) is None and producer.producing  # trains from scratch
    waiting, out = _in_thread(lambda: branch.acquire(attempt=1, own_epoch=0))
    time.sleep(0.5)
    assert waiting.is_alive()  # a live lease: the branch waits
    producer.after_epoch(1, _fake_checkpoint(tmp_path / "e1.pt", 1, a))
    assert (folder / f"{'k' * 16}.partial.pt").exists() and waiting.is_alive()
    producer.after_epoch(2, _fake_checkpoint(tmp_path / "e2.pt", 2, a))
    waiting.join(timeout=10)
    assert out["value"] == folder / f"{'k' * 16}.pt" and not (folder / f"{'k' * 16}.partial.pt").exists()
    assert not (folder / f"{'k' * 16}.lease").exists() and not producer.producing
    assert _history(client, b) == [(1, 1.0), (2, 0.5)] and _history(client, b, "epoch_time_s") == [(1, 10.0), (2, 20.0)]
    tags = client.get_run(b).data.tags
    assert (tags[PREFIX_FROM_TAG], tags[PREFIX_EPOCHS_TAG]) == (a, "2")
    assert _history(client, b, "prefix_saved_s") == [(1, 30.0)] and client.get_metric_history(b, "prefix_wait_s")
    assert client.get_run(a).data.tags[PREFIX_KEY_TAG] == "k" * 16
    assert client.get_run(a).data.tags[PREFIX_CHECKPOINT_TAG] == str(folder / f"{'k' * 16}.pt")
    # a retry of the branch copies nothing twice; past the prefix it needs nothing
    assert branch.acquire(attempt=2, own_epoch=1) == folder / f"{'k' * 16}.pt"
    assert _history(client, b) == [(1, 1.0), (2, 0.5)] and len(client.get_metric_history(b, "prefix_saved_s")) == 1
    assert branch.acquire(attempt=3, own_epoch=2) is None


def test_a_failed_producer_hands_its_partial_prefix_over(store, tmp_path):
    """The producer fails after epoch 1 (its lease is released): a waiting branch takes over from
    the partial checkpoint (epoch 1 is not trained again); the producer's retry then finds a live
    lease, waits, and branches from the prefix the taker published."""
    client, (a, b, _), folder = store
    producer, taker = _sharing(client, a, folder), _sharing(client, b, folder)
    producer.acquire(attempt=1, own_epoch=0)
    producer.after_epoch(1, _fake_checkpoint(tmp_path / "e1.pt", 1, a))
    waiting, out = _in_thread(lambda: taker.acquire(attempt=1, own_epoch=0))
    time.sleep(0.3)
    assert waiting.is_alive()
    producer.release()  # run_trial's finally after the error
    waiting.join(timeout=10)
    assert out["value"] == folder / f"{'k' * 16}.partial.pt" and taker.producing
    assert _history(client, b) == [(1, 1.0)] and client.get_run(b).data.tags["tood.prefix_epochs"] == "1"
    retried, out2 = _in_thread(lambda: _sharing(client, a, folder).acquire(attempt=2, own_epoch=1))
    time.sleep(0.3)
    assert retried.is_alive()  # the taker holds the lease now
    taker.after_epoch(2, _fake_checkpoint(tmp_path / "e2.pt", 2, b))
    retried.join(timeout=10)
    assert out2["value"] == folder / f"{'k' * 16}.pt"
    assert client.get_run(a).data.tags["tood.prefix_from"] == b and "tood.prefix_key" in client.get_run(b).data.tags


def test_a_stale_lease_is_taken_and_a_found_prefix_needs_none(store, tmp_path, monkeypatch):
    from orchestration import prefix

    client, (a, b, c), folder = store
    folder.mkdir()
    (folder / f"{'k' * 16}.lease").write_text(json.dumps({"run_id": "dead", "beat": time.time() - prefix.LEASE_TTL_S - 1}))
    taker = _sharing(client, a, folder)
    assert taker.acquire(attempt=1, own_epoch=0) is None and taker.producing  # the holder died: taken at once
    taker.release()
    found = _fake_checkpoint(tmp_path / "earlier.pt", 2, c)  # another launch's published prefix
    assert _sharing(client, b, folder, found).acquire(attempt=1, own_epoch=0) == found  # a live lease does not matter
    assert client.get_run(b).data.tags["tood.prefix_from"] == c


def test_published_prefixes_are_found_by_key_while_their_file_exists(store, tmp_path):
    from orchestration.prefix_tags import published_prefixes, tag_prefix

    client, (a, b, _), _ = store
    kept, gone = _fake_checkpoint(tmp_path / "kept.pt", 2, a), tmp_path / "gone.pt"
    tag_prefix(client, a, "k1", kept)
    tag_prefix(client, b, "k2", gone)
    assert published_prefixes(client, {"k1", "k2", "k3"}) == {"k1": str(kept)}


def test_rerun_stale_skips_prefixes_published_by_other_code(store, tmp_path, monkeypatch):
    """A prefix checkpoint published by a run of other code (orchestration.provenance) is found
    by a plain launch and not with --rerun-stale, which then trains the prefix again."""
    from orchestration.prefix import plan_sharing
    from orchestration.provenance import PRETEND_ENV, code_fingerprint
    from orchestration.prefix_tags import published_prefixes, tag_prefix

    client, (a, b, _), _ = store
    here = code_fingerprint()
    monkeypatch.setenv(PRETEND_ENV, "tood/engine.py")
    for k, v in code_fingerprint().tags().items():
        client.set_tag(a, k, v)  # a published k1 with other code
    monkeypatch.delenv(PRETEND_ENV)
    for k, v in here.tags().items():
        client.set_tag(b, k, v)
    tag_prefix(client, a, "k1", _fake_checkpoint(tmp_path / "old.pt", 2, a))
    tag_prefix(client, b, "k2", _fake_checkpoint(tmp_path / "new.pt", 2, b))
    assert set(published_prefixes(client, {"k1", "k2"})) == {"k1", "k2"}
    trials = [SimpleNamespace(prefix=k) for k in ("k1", "k2")]
    found = []  # what plan_sharing hands to share_prefixes as published by earlier launches
    monkeypatch.setattr("orchestration.suite.share_prefixes", lambda trials, specs, published, share: found.append(set(published)) or {})
    plan_sharing(client, trials, [], True, False)
    plan_sharing(client, trials, [], True, False, rerun_stale=True)
    assert found == [{"k1", "k2"}, {"k2"}]


# ------------------------------------------------------------------ launches on local Ray (slow)

ROW_FACTORS = {"TOOD": {"head": "t_head", "assigner": "tal"},
               "alpha 0.5": {"head": "t_head", "assigner": "tal", "alpha": 0.5, "beta": 4},
               "T-head + ATSS": {"head": "t_head", "assigner": "atss"},
               "alpha 1.5": {"head": "t_head", "assigner": "tal", "alpha": 1.5, "beta": 8}}


def _grid(folder: Path, labels: list[str], epochs: int = 3, warmup: int = PREFIX) -> Path:
    """Rows of the T-head family on the smoke grid's tiny data: they differ after epoch ``warmup`` only."""
    import yaml

    raw = yaml.safe_load(SMOKE.read_text())
    tiny = {**raw["rows"][1]["set"], "train.epochs": epochs, "criterion.warmup_epochs": warmup}
    path = folder / f"grid{len(labels)}.yaml"
    path.write_text(yaml.safe_dump({"study": "family", "table": "smoke", "base": str(ROOT / "experiments/base.yaml"), "seeds": [0],
                                    "rows": [{"label": l, "factors": ROW_FACTORS[l], "set": tiny} for l in labels]}, sort_keys=False))
    return path


def _runs(uri: str, launch_name: str) -> tuple[MlflowClient, dict]:
    client, _, runs = _launch_runs(uri, "family", launch_name)
    return client, runs


def _check_trained_once(client: MlflowClient, runs: dict, epochs: int, trained: int) -> None:
    """Every run FINISHED with each epoch logged once; ``trained`` epochs were trained in all
    (an epoch's wall time is a fresh float where it trained, a copy where it was copied)."""
    times = set()
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss_total")]
        assert sorted(steps) == list(range(1, epochs + 1)), name
        times |= {m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")}
    assert len(times) == trained


def _api_run(launch, grid: Path, name: str, **options):
    """A launch through the Python API (options `tood-ablate run` may not have), as a subprocess."""
    import subprocess
    import sys

    from tests.test_orchestration import _env

    code = ("import sys\nfrom orchestration.launch import LaunchOptions, run_suite\n"
            f"r = run_suite([{str(grid)!r}], LaunchOptions(name={name!r}, storage_path={str(launch.path / 'ray')!r}, "
            f"tracking_uri={launch.uri!r}, quiet=True, **{options!r}))\nsys.exit(0 if r.ok else 1)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=launch.path, env=_env(), capture_output=True, text=True,
                          timeout=900, start_new_session=True, check=False)


@pytest.mark.slow
def test_a_launch_trains_the_shared_warm_up_once_and_matches_one_without_sharing(launch, monkeypatch):
    """Three rows of one prefix: 2 + 3 x 1 epochs trained instead of 9; every number but wall times
    equals a launch that trains each row in full; a later launch's new row branches from the
    published prefix, and `plan` says so beforehand."""
    from orchestration.plan import plan

    monkeypatch.chdir(launch.path)
    three = _grid(launch.path, ["TOOD", "alpha 0.5", "T-head + ATSS"])
    first = launch.start("run", str(three), "--name", "shared")
    assert first.wait(timeout=900) == 0, first.output()
    client, shared = _runs(launch.uri, "shared")
    _check_trained_once(client, shared, epochs=3, trained=2 + 3)
    producers = [r for r in shared.values() if "tood.prefix_from" not in r.data.tags]
    assert len(producers) == 1 and producers[0].data.tags["tood.prefix_checkpoint"].endswith(".pt")
    for run in shared.values():
        if run is not producers[0]:
            assert run.data.tags["tood.prefix_from"] == producers[0].info.run_id and run.data.tags["tood.prefix_epochs"] == "2"
    record = json.loads((launch.path / "ray/shared/tood_launch.json").read_text())["trainings"]
    assert (record["shared_prefixes"], record["branches"], record["saved_trial_epochs"]) == (1, 2, 4)

    full = _api_run(launch, three, "full", rerun=True, share_prefix=False)
    assert full.returncode == 0, full.stderr[-3000:]
    client, unshared = _runs(launch.uri, "full")
    _check_trained_once(client, unshared, epochs=3, trained=9)
    assert not any("tood.prefix_from" in r.data.tags for r in unshared.values())
    for name, run in shared.items():
        for key in set(run.data.metrics) - set(TIMING) - {"attempt_wall_s", "prefix_saved_s", "prefix_wait_s"}:
            a, b = _history(client, run.info.run_id, key), _history(client, unshared[name].info.run_id, key)
            assert a == b or all(x[1] != x[1] and y[1] != y[1] for x, y in zip(a, b)), (name, key)

    four = _grid(launch.path, ["TOOD", "alpha 0.5", "T-head + ATSS", "alpha 1.5"])
    p = plan([four], tracking_uri=launch.uri)
    assert (p["finished_in_store"], p["to_train"], p["trial_epochs"]["saved"]) == (3, 1, 2)
    assert p["shared_prefixes"][0]["found"] == producers[0].data.tags["tood.prefix_checkpoint"]
    more = launch.start("run", str(four), "--name", "more")
    assert more.wait(timeout=900) == 0, more.output()
    client, later = _runs(launch.uri, "more")
    new = later["head=t_head,assigner=tal,alpha=1.5,beta=8,seed=0"]
    assert new.data.tags["tood.prefix_from"] == producers[0].info.run_id and new.data.tags["tood.attempts"] == "1"
    assert _history(client, new.info.run_id, "epoch_time_s")[:2] == _history(client, producers[0].info.run_id, "epoch_time_s")[:2]
    assert sum("tood.reused_from" in r.data.tags for r in later.values()) == 3


@pytest.mark.slow
def test_the_producer_killed_mid_prefix_is_taken_over_and_nothing_trains_twice(launch):
    """Every trial that ends epoch 1 fails once there (only the producer does: the branches start
    at epoch 3); the prefix is finished by a retry or a branch that takes over its partial checkpoint."""
    from tests.test_orchestration import _env

    grid = _grid(launch.path, ["TOOD", "alpha 0.5", "T-head + ATSS"])
    env = _env(TOOD_FAIL_ONCE_AT_EPOCH="1", TOOD_FAIL_ONCE_TRIAL="seed=0")
    driver = launch.start("run", str(grid), "--name", "fault", env=env)
    assert driver.wait(timeout=900) == 0, driver.output()
    client, runs = _runs(launch.uri, "fault")
    _check_trained_once(client, runs, epochs=3, trained=2 + 3)
    assert sorted(r.data.tags["tood.attempts"] for r in runs.values()) == ["1", "1", "2"]
    assert not any(r.data.tags.get("tood.error") for r in runs.values())
    assert len(list((launch.path / "ray/fault/faults").iterdir())) == 1


@pytest.mark.slow
def test_a_driver_killed_while_branches_wait_is_finished_by_resume(launch):
    import signal

    grid = _grid(launch.path, ["TOOD", "alpha 0.5", "T-head + ATSS"], epochs=4, warmup=3)
    driver = launch.start("run", str(grid), "--name", "cut")
    deadline, waiting = time.monotonic() + 600, False
    while time.monotonic() < deadline and driver.proc.poll() is None and not waiting:
        if (launch.path / "mlruns.db").exists() and (launch.path / "ray/cut/tood_launch.json").exists():
            client, runs = _runs(launch.uri, "cut")
            steps = {n: len(client.get_metric_history(r.info.run_id, "loss_total")) for n, r in runs.items()}
            running = [n for n, r in runs.items() if r.info.status == "RUNNING"]
            waiting = any(steps[n] >= 1 for n in running) and any(steps[n] == 0 for n in running)
        time.sleep(0.5)  # polling interval of the store, not a wait for a result
    assert waiting and driver.proc.poll() is None, driver.output()
    driver.signal(signal.SIGKILL)
    driver.stop()
    resumed = launch.start("resume", "cut")
    assert resumed.wait(timeout=900) == 0, resumed.output()
    client, runs = _runs(launch.uri, "cut")
    _check_trained_once(client, runs, epochs=4, trained=3 + 3)
    assert _launch_runs(launch.uri, "family", "cut")[1].info.status == "FINISHED"


def test_compute_table_counts_what_shared_prefixes_saved_once_per_training():
    from orchestration.host import Machine
    from reports.compute import SAVED_COLUMN, TrialCompute, compute_table, summary_compute_table

    def rec(run, row, saved=0.0, reused="", counted=""):
        return TrialCompute(run, row, 0, "FINISHED", 1, 0, 0.0 if reused and not counted else 60.0, 1.0, 0.0, reused,
                            counted, prefix_saved_s=saved)

    host = Machine("cpu", 2, "none", "torch", "ray", "mlflow", recorded=True)
    rows = [SimpleNamespace(label="a"), SimpleNamespace(label="b")]
    records = [rec("p", "a"), rec("x", "a", saved=40.0), rec("y", "b", saved=40.0), rec("z", "b", reused="y")]
    table = compute_table("t_compute", "t", rows, records, host)
    assert [table.cell(r, SAVED_COLUMN) for r in ("a", "b", "Total")] == ["40", "40", "80"]
    assert [table.cell(r, "wall time (s)") for r in ("a", "b", "Total")] == ["120", "60", "180"]  # the prefix once, in p
    assert any(n.startswith(SAVED_COLUMN) for n in table.notes)
    summary = summary_compute_table({"s1": records, "s2": [rec("q", "a")]}, host)
    assert [summary.cell(s, SAVED_COLUMN) for s in ("s1", "s2", "Total")] == ["80", "0", "80"]
    plain = compute_table("t_compute", "t", rows, [rec("p", "a"), rec("y", "b")], host)
    assert SAVED_COLUMN not in plain.header


def test_a_branched_runs_copied_epochs_count_once_in_the_compute_table(store):
    import pandas as pd

    from orchestration.host import Machine
    from orchestration.prefix_tags import copy_prefix
    from orchestration.trial_run import log_metrics
    from reports.compute import EVAL_COLUMN, SAVED_COLUMN, compute_table, trial_compute

    client, (producer, branch, _), _ = store
    history = [{"epoch": e, "loss_total": 1.0, "epoch_time_s": 20.0, "eval_time_s": 1.0 * e} for e in (1, 2)]
    for h in history:
        log_metrics(client, producer, {k: v for k, v in h.items() if k != "epoch"}, h["epoch"])
    log_metrics(client, producer, {"loss_total": 1.0, "epoch_time_s": 20.0, "eval_time_s": 3.0}, 3)
    log_metrics(client, producer, {"attempt_wall_s": 66.0}, 1)
    copy_prefix(client, branch, history, producer, 2, attempt=1)
    log_metrics(client, branch, {"loss_total": 1.0, "epoch_time_s": 20.0, "eval_time_s": 5.0}, 3)
    log_metrics(client, branch, {"attempt_wall_s": 25.0}, 1)
    trials = pd.DataFrame([{"run_id": r, "row": "a", "seed": 0, "status": "FINISHED", "attempts": "1", "cpus_per_trial": "1",
                            "gpus_per_trial": "0", "reused_from": ""} for r in (producer, branch)])
    records = trial_compute(client, trials)
    assert [(r.eval_s, r.prefix_saved_s) for r in records] == [(6.0, 0.0), (5.0, 43.0)]  # 2 x 20 s + 1 + 2 s copied
    table = compute_table("t_compute", "t", [SimpleNamespace(label="a")], records,
                          Machine("cpu", 2, "none", "torch", "ray", "mlflow", recorded=True))
    assert [table.cell("Total", c) for c in ("wall time (s)", EVAL_COLUMN, SAVED_COLUMN)] == ["91", "11", "43"]
