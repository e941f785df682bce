"""``tood-ablate plan``: what ``tood-ablate run`` would do with these grids, as a dry run that
starts no Ray, creates no run and trains nothing.

It prints the child runs, the distinct trainings (``orchestration.suite`` trial keys), the trials
already finished in the store (reused, not trained), the shared prefixes and the trial-epochs
they save, and the estimated wall time on this machine: the trials in the launch's order placed
into ``--slots`` concurrent slots (a branch starts once its prefix exists), each taking its
estimated cost (``orchestration.suite.estimated_cost``) times the seconds per cost unit that the
store's finished runs measured on this CPU (``attempt_wall_s``), or :data:`COST_MODEL_S_PER_UNIT`
when none did. Data generation, backbone pre-training and Ray's start are not in the estimate.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

from orchestration.schema import ATTEMPTS_TAG, EXPERIMENT_PREFIX, HOST_TAG, REUSED_TAG, default_tracking_uri
from orchestration.suite import PrefixGroup, UniqueTrial, estimated_cost, schedule, unique_trials
from tood.config import ConfigError, parse_override

# Seconds per cost unit with no measurement: the proxy's parallel head trains 800 images of
# 160 px in 7.7 s at 1 thread (the measurement behind suite.HEAD_COST), one unit an image.
COST_MODEL_S_PER_UNIT = 7.7 / 800


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_from_params(params: dict[str, str]) -> dict[str, Any]:
    """The nested config of a trial run from its params (the flattened config, values as text)."""
    out: dict[str, Any] = {}
    for name, text in params.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = _value(text)
    return out


def measured_rate(client: Any, cpu: str) -> tuple[float, int]:
    """(seconds per cost unit, runs measured) over the store's finished trial runs that trained
    in one attempt on a CPU named ``cpu``; (nan, 0) when there is none."""
    from orchestration.mlflow_store import retry
    from orchestration.prefix_tags import PREFIX_EPOCHS_TAG

    exps = [e.experiment_id for e in retry(client.search_experiments, filter_string=f"name LIKE '{EXPERIMENT_PREFIX}%'")]
    seconds, units, n, token = 0.0, 0.0, 0, None
    while exps:
        page = retry(client.search_runs, exps, "attributes.status = 'FINISHED' and tags.`tood.role` = 'trial'",
                     max_results=1000, page_token=token)
        for run in page:
            tags, wall = run.data.tags, run.data.metrics.get("attempt_wall_s")
            if REUSED_TAG in tags or tags.get(ATTEMPTS_TAG) != "1" or wall is None:
                continue
            try:
                if json.loads(tags.get(HOST_TAG, "{}")).get("cpu") != cpu:
                    continue
                cost = estimated_cost(config_from_params(run.data.params), start=int(tags.get(PREFIX_EPOCHS_TAG, 0)))
            except (ValueError, KeyError, TypeError):
                continue
            seconds, units, n = seconds + wall, units + cost, n + 1
        token = page.token
        if not token:
            break
    return (seconds / units, n) if units > 0 else (float("nan"), 0)


def simulate(order: list[UniqueTrial], specs: list[list[Any]], slots: int, rate: float) -> float:
    """Seconds until the last of ``order`` ends: each trial takes the slot that frees first; a
    branch then waits there for its prefix (its producer's start + the prefix's time), as at run
    time; a branch of a prefix found in the store starts at once."""
    free, ready = [0.0] * max(1, slots), {}
    for t in order:
        config = specs[t.primary[0]][t.primary[1]].config
        i = free.index(min(free))
        start = free[i]
        if t.role == "producer":
            ready[t.prefix] = start + rate * (estimated_cost(config) - estimated_cost(config, start=t.prefix_epochs))
        elif t.role == "branch":
            start = max(start, ready.get(t.prefix, 0.0))
        free[i] = start + rate * t.cost
    return max(free)


def _store(uri: str) -> Any:
    """A client of the store at ``uri``, or None when it does not exist yet (a dry run creates nothing)."""
    from mlflow.tracking import MlflowClient

    path = uri[len("sqlite:///"):].partition("?")[0] if uri.startswith("sqlite:///") else uri if "://" not in uri else None
    if path is not None and not Path(path).exists():
        return None
    return MlflowClient(uri)


def plan(grid_paths: list[str | Path], profile: str = "proxy", seeds: list[int] | None = None,
         overrides: dict[str, Any] | None = None, tracking_uri: str | None = None, share: bool = True,
         rerun: bool = False, slots: int | None = None, rerun_stale: bool = False) -> dict[str, Any]:
    """The plan of a launch of ``grid_paths`` (see the module docstring) as a JSON-able dict."""
    from orchestration.grid import expand, load_grid
    from orchestration.host import machine
    from orchestration.prefix import plan_sharing
    from orchestration.provenance import stale_keys
    from orchestration.reuse import finished_by_key

    grids = [load_grid(p) for p in grid_paths]
    specs = [expand(g, profile, seeds, overrides or {}) for g in grids]
    unique = schedule(unique_trials(specs), specs)
    uri = tracking_uri or default_tracking_uri()
    client = _store(uri)
    finished = {} if rerun or client is None else finished_by_key(client, {t.key for t in unique})
    stale = stale_keys(finished)  # trained by other code than this checkout's (orchestration.provenance)
    if rerun_stale:
        finished = {k: run for k, run in finished.items() if k not in stale}
    to_train = [t for t in unique if t.key not in finished]
    slots = slots or len(os.sched_getaffinity(0))
    rate, measured = measured_rate(client, machine().cpu) if client is not None else (float("nan"), 0)
    rate = rate if measured else COST_MODEL_S_PER_UNIT
    wall = {}
    for shared in (False, True):  # plan_sharing sets each trial's role and cost, schedule orders by them
        plan_sharing(client, to_train, specs, shared, rerun, rerun_stale)
        wall[shared] = simulate(schedule(to_train, specs), specs, slots, rate)
    groups: dict[str, PrefixGroup] = plan_sharing(client, to_train, specs, share, rerun, rerun_stale)
    spec_of = {t.key: specs[t.primary[0]][t.primary[1]] for t in to_train}
    names = {key: f"{s.study}/{s.name}" for key, s in spec_of.items()}
    full = sum(s.config["train"]["epochs"] for s in spec_of.values())
    saved = sum(g.saved_epochs for g in groups.values())
    return {
        "grids": [str(p) for p in grid_paths], "profile": profile, "store": uri if client is not None else f"{uri} (not created yet)",
        "child_runs": sum(len(s) for s in specs), "distinct_trainings": len(unique), "finished_in_store": len(finished),
        "stale_in_store": len(stale), "rerun_stale": rerun_stale,
        "to_train": len(to_train), "share_prefix": share,
        "trial_epochs": {"without_sharing": full, "with_sharing": full - saved, "saved": saved},
        "shared_prefixes": [{"key": g.key, "epochs": g.epochs, "found": g.found, "trials": [names[k] for k in g.trials]}
                            for g in groups.values()],
        "slots": slots, "seconds_per_unit": rate,
        "rate_from": f"measured by {measured} finished runs of this CPU in the store" if measured else "cost model: no run of this CPU in the store",
        "estimated_wall_s": {"without_sharing": round(wall[False], 1), "with_sharing": round(wall[True], 1)},
    }


def _lines(p: dict[str, Any]) -> list[str]:
    e, w = p["trial_epochs"], p["estimated_wall_s"]
    n_groups, branches = len(p["shared_prefixes"]), sum(len(g["trials"]) - (0 if g["found"] else 1) for g in p["shared_prefixes"])
    share = "with sharing" if p["share_prefix"] else "without sharing (--no-share-prefix)"
    return [
        f"plan of {len(p['grids'])} grid(s), profile {p['profile']}; store {p['store']}",
        f"  child runs               {p['child_runs']}",
        f"  distinct trainings       {p['distinct_trainings']}",
        f"  finished in the store    {p['finished_in_store']} (reused, not trained; --rerun trains them again)",
        f"  stale                    {p['stale_in_store']} of the finished trained by other code than this checkout's "
        + ("(--rerun-stale: trained again)" if p["rerun_stale"] else "(reused and marked in the report; --rerun-stale trains them again)"),
        f"  to train                 {p['to_train']}: {e['without_sharing']} trial-epochs",
        f"  shared prefixes          {n_groups}, {branches} trainings branch from them: {e['saved']} trial-epochs not "
        f"trained ({100 * e['saved'] / max(e['without_sharing'], 1):.1f}%) -> {e['with_sharing']} trial-epochs",
        f"  estimated wall time      {w['with_sharing'] / 3600:.2f} h with sharing, {w['without_sharing'] / 3600:.2f} h "
        f"without, on {p['slots']} slots at {p['seconds_per_unit'] * 1000:.2f} ms per cost unit ({p['rate_from']})",
        f"  `tood-ablate run` would train {share}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tood-ablate plan", description=__doc__.splitlines()[0].strip("`").split(": ", 1)[-1])
    ap.add_argument("grid", nargs="*", help="grid files, as for `run`")
    ap.add_argument("--all", action="store_true", help="every paper study in experiments/, as for `run --all`")
    ap.add_argument("--profile", default="proxy", help="config profile of base.yaml (default: proxy)")
    ap.add_argument("--seeds", help="comma-separated seeds replacing the grids' (default: the grids' seeds)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every trial")
    ap.add_argument("--tracking-uri", help="the store a launch would reuse finished trials and prefixes from "
                                           "(default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns.db)")
    ap.add_argument("--no-share-prefix", action="store_true", help="plan a launch that trains every trial in full")
    ap.add_argument("--rerun", action="store_true", help="plan a launch that reuses nothing from the store")
    ap.add_argument("--rerun-stale", action="store_true", help="plan a launch that trains again the finished trials "
                                                                "that other code trained")
    ap.add_argument("--slots", type=int, help="trials at once (default: this machine's CPUs)")
    ap.add_argument("--groups", action="store_true", help="list the trials of each shared prefix")
    ap.add_argument("--json", metavar="PATH", help="also write the plan as JSON to PATH")
    args = ap.parse_args(argv)
    from orchestration.grid import parse_seeds
    from orchestration.launch import suite_grids

    if bool(args.grid) == bool(args.all):
        raise ConfigError("tood-ablate plan: give grid files or --all (expected one of the two)")
    result = plan(suite_grids() if args.all else args.grid, args.profile, parse_seeds(args.seeds),
                  dict(parse_override(o) for o in args.overrides), args.tracking_uri, not args.no_share_prefix, args.rerun,
                  args.slots, args.rerun_stale)
    print("\n".join(_lines(result)))
    if args.groups:
        for g in result["shared_prefixes"]:
            print(f"  prefix {g['key']} (epochs 1-{g['epochs']}{', found in the store' if g['found'] else ''}): "
                  + ", ".join(g["trials"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
