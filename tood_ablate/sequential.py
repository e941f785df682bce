"""``tood-ablate run --until-decided``: seeds in rounds, only where a claim can still be decided.

Round k launches every row of the grids with the seeds it has so far plus the ones the plan
asks for (finished trials are reused by key, so a round trains only the new seeds; each round's
launch, ``<name>-r<k>``, is a complete picture of the studies for the report). After a round the
claims of each study (reports.claims, with the grid's claim shape) are re-read from the store and
``reports.claim_planner.next_round`` decides, at the planned looks with a Bonferroni split of alpha,
which claims are decided and which rows train the next seeds (seeds stay paired). The plan is a
function of the store alone, so an interrupted run continues by running the same command again
(or ``tood-ablate resume <name>-r<k>`` for the round that was cut, then the same command).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pandas as pd

from orchestration.folders import storage_root
from orchestration.grid import expand, load_grid
from orchestration.launch import LaunchOptions, run_suite
from orchestration.schema import default_tracking_uri
from orchestration.uris import check_tracking_uri
from reports.claim_planner import HORIZON, Claim, Plan, next_round
from reports.claim_tests import LOOKS, SequentialDesign, check_looks, look_levels
from reports.claims import Comparison, compare, seed_values
from reports.collect import NoRunsError, StudyData, collect_study, open_client
from reports.compute import trial_compute
from reports.formats import to_markdown
from reports.paired_tests import ALPHA, LESS, MARGIN, WITHIN
from reports.render import render_parents
from reports.tables import Table, summarize
from tood.config import ConfigError

SEQUENTIAL_ARTIFACT = "sequential_claims"


def _claim(c: Comparison) -> tuple[Claim, str, str]:
    """The planner's claim for a comparison, and the row keys its two sides read (study/row/metric)."""
    row, ref = f"{c.study}/{c.row}/{c.metric}", f"{c.study}/{c.ref}/{c.metric}"
    if c.expect == WITHIN:
        return Claim(row, ref, WITHIN, c.delta), row, ref
    if c.shape == "margin":  # the gain in the paper's direction is at least delta
        return (Claim(row, ref, MARGIN, c.delta) if c.expect != LESS else Claim(ref, row, MARGIN, c.delta)), row, ref
    return Claim(row, ref, c.expect), row, ref


def study_claims(data: StudyData) -> tuple[list[Comparison], dict[str, dict[int, float]]]:
    """The study's claims (the paper's headline comparisons) and row/metric -> seed -> value."""
    comps = [c for c in compare(data.study, data.table, summarize(data), data.trials, claim=data.claim) if c.is_claim]
    values = {}
    for c in comps:
        values[f"{c.study}/{c.row}/{c.metric}"] = seed_values(data.trials, c.row, c.metric)
        values[f"{c.study}/{c.ref}/{c.metric}"] = seed_values(data.trials, c.ref, c.metric)
    return comps, values


def plan_round(studies: list[StudyData], looks: tuple[int, ...], max_seeds: int, alpha: float
               ) -> tuple[Plan, list[Comparison]]:
    comps, values = [], {}
    for data in studies:
        c, v = study_claims(data)
        comps += c
        values.update(v)
    return next_round([_claim(c)[0] for c in comps], values, looks, max_seeds, alpha), comps


def finished_seeds(studies: list[StudyData]) -> dict[tuple[str, str], set[int]]:
    out: dict[tuple[str, str], set[int]] = {}
    for data in studies:
        done = data.trials[data.trials["status"] == "FINISHED"]
        for row, seed in zip(done["row"], done["seed"]):
            out.setdefault((data.study, str(row)), set()).add(int(seed))
    return out


def row_seeds_for_round(grids: list, studies: list[StudyData], plan: Plan | None, first: int) -> dict[str, list[int]]:
    """study/row -> the seeds its next launch holds: seeds 0..first-1 (the first look), what it
    finished, and what the plan asks. The first look always: a first round cut short leaves rows
    with some of its seeds, and a row in no claim gets no asks to complete them."""
    have = finished_seeds(studies)
    asked: dict[tuple[str, str], set[int]] = {}
    for key, seeds in (plan.seeds.items() if plan else []):
        study, row, _metric = key.split("/", 2)
        asked.setdefault((study, row), set()).update(seeds)
    out = {}
    for g in grids:
        for r in g.rows:
            key = (g.study, r["label"])
            seeds = set(range(first)) | have.get(key, set()) | asked.get(key, set())
            out[f"{g.study}/{r['label']}"] = sorted(seeds)
    return out


def latest_studies(tracking_uri: str, grids: list) -> list[StudyData]:
    """The latest launch of each grid's study in the store ([] before the first round)."""
    try:
        client = open_client(tracking_uri)
    except NoRunsError:  # a sqlite store not created yet
        return []
    out = []
    for g in grids:
        try:
            out.append(collect_study(client, g.study))
        except NoRunsError:
            continue
    return out


def sequential_table(plan: Plan, comps: list[Comparison], spent: int, fixed: int, cpu_h: float,
                     prefix_cpu_h: float = 0.0) -> Table:
    """Per claim: shape, delta, test, n, looks, interval, verdict, the seeds projected to decide it;
    notes: the looks, and the compute against a fixed design (``prefix_cpu_h``: what shared
    prefixes saved the trainings counted)."""
    looks = ",".join(map(str, plan.looks))
    body = []
    for c, status in zip(comps, plan.claims):
        d = status.decision
        test = d.test if d else None
        interval = "-" if test is None or math.isnan(test.lo) else f"[{test.lo:+.3g}, {test.hi:+.3g}]"
        if status.state in ("decided",) or test is None or test.verdict != "inconclusive":
            need = "-"
        elif status.projected is None:
            need = f"none up to {HORIZON} at the observed effect"
        else:
            need = str(status.projected)
        body.append([c.study, c.claim, c.shape, f"{c.delta:g}", test.test if test else "-", str(status.n), looks,
                     interval, test.verdict if test else "pending", status.state, need])
    decided = sum(1 for s in plan.claims if s.decision and s.decision.test.verdict != "inconclusive")
    rate = f"{decided / cpu_h:.2f}" if cpu_h and not math.isnan(cpu_h) else "not recorded"
    notes = [f"Looks at {looks} paired seeds, each at alpha / {len(plan.looks)} "
             f"({', '.join(f'{x:.4g}' for x in plan.levels)}) one-sided: a Bonferroni split, so each claim's chance "
             "of a wrong verdict stays at alpha over all its looks (reports/claim_tests.py).",
             f"Trainings spent: {spent}; a fixed design with {plan.looks[-1]} seeds in every row: {fixed}. "
             f"Decided claims: {decided} of {len(comps)}; per CPU-hour: {rate} ({cpu_h:.2f} CPU h)."]
    if spent and cpu_h and not math.isnan(cpu_h):
        per = cpu_h / spent
        notes.append(f"At this launch's mean of {per:.3f} CPU h per training, the fixed design would cost about "
                     f"{fixed * per:.1f} CPU h: {fixed * per - cpu_h:+.1f} CPU h against the rounds.")
    if spent:
        notes.append(f"Shared prefixes saved {prefix_cpu_h:.2f} CPU h of training over these {spent} trainings (the "
                     "warm-up epochs branched trials copied instead of training; orchestration/prefix.py).")
    return Table(SEQUENTIAL_ARTIFACT, "Claims decided in rounds of seeds",
                 ["Study", "Claim", "Shape", "δ", "Test", "n", "Looks", "Interval", "Verdict", "State", "Seeds to decide"],
                 body, notes)


def _spent(tracking_uri: str, studies: list[StudyData]) -> tuple[int, float, float]:
    """Distinct trainings behind the studies' latest launches, their CPU hours, and the CPU hours
    their shared prefixes saved (the epochs branched trials copied instead of training)."""
    client = open_client(tracking_uri)
    seen, cpu_h, saved_cpu_h = set(), 0.0, 0.0
    for data in studies:
        for r in trial_compute(client, data.trials, count_sources=True):
            if r.trained_by not in seen and r.status == "FINISHED":
                seen.add(r.trained_by)
                cpu_h += 0.0 if math.isnan(r.cpu_h) else r.cpu_h
                saved_cpu_h += r.prefix_saved_s * (1.0 if math.isnan(r.cpus) else r.cpus) / 3600
    return len(seen), cpu_h, saved_cpu_h


def claims_state(tracking_uri: str, grids: list, design: tuple[int, ...], max_seeds: int, alpha: float
                 ) -> tuple[list[StudyData], Plan, Table]:
    """The grids' latest launches in the store, the plan of the next round and the claims table."""
    studies = latest_studies(tracking_uri, grids)
    plan, comps = plan_round(studies, design, max_seeds, alpha)
    spent, cpu_h, saved = _spent(tracking_uri, studies)
    fixed = sum(len(g.rows) for g in grids) * design[-1]
    return studies, plan, sequential_table(plan, comps, spent, fixed, cpu_h, saved)


def parse_looks(text: str) -> tuple[int, ...]:
    """``--looks``: comma-separated seed counts (checked by :func:`seed_design`)."""
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise ConfigError(f"--looks: got {text!r} (expected increasing seed counts, e.g. 3,5,8,12)") from None


def seed_design(looks: tuple[int, ...], max_seeds: int, alpha: float = ALPHA) -> tuple[int, ...]:
    """The looks up to ``max_seeds``: ConfigError unless ``looks`` are increasing seed counts,
    ``max_seeds`` reaches the first and ``alpha`` is a one-sided level."""
    try:
        looks = check_looks(looks)
    except ValueError as e:
        raise ConfigError(f"--looks: {e}") from None
    if max_seeds < looks[0]:
        raise ConfigError(f"--max-seeds: got {max_seeds} (expected >= the first look, {looks[0]})")
    try:
        look_levels(looks, alpha)  # the looks are valid here: only alpha can be out of range
    except ValueError:
        raise ConfigError(f"--alpha: got {alpha:g} (expected a one-sided error rate, 0 < alpha < 0.5)") from None
    return tuple(n for n in looks if n <= max_seeds)


def publish_table(tracking_uri: str, studies: list[StudyData], table: Table, out: Path,
                  design: SequentialDesign) -> None:
    """The table as markdown beside the launch storage and on each study's latest parent run
    (an MLflow table artifact the UI shows, and the markdown); the parents are tagged with the
    ``design`` (rounds launched before parents carried it at creation get it here)."""
    out.write_text(to_markdown(table), encoding="utf-8")
    client = open_client(tracking_uri)
    frame = pd.DataFrame(table.rows, columns=table.header)
    for data in studies:
        for tag, value in design.tags().items():
            client.set_tag(data.parent_id, tag, value)
        own = frame[frame["Study"] == data.study]
        client.log_table(data.parent_id, own, f"{SEQUENTIAL_ARTIFACT}.json")
        client.log_artifact(data.parent_id, str(out))


def run_until_decided(grid_paths: list, opts: LaunchOptions, max_seeds: int, looks: tuple[int, ...] = LOOKS,
                      alpha: float = ALPHA) -> int:
    design = seed_design(looks, max_seeds, alpha)
    tagged = SequentialDesign(design, alpha)  # on every round's parent runs: reports decide the claims at its looks
    opts = dataclasses.replace(opts, tracking_uri=check_tracking_uri(opts.tracking_uri or default_tracking_uri()),
                               parent_tags={**opts.parent_tags, **tagged.tags()})
    if opts.seeds is not None:
        raise ConfigError("--seeds: not with --until-decided (the rounds choose the seeds)")
    grids = [load_grid(p) for p in grid_paths]
    for g in grids:  # every config valid before anything trains
        expand(g, opts.profile, list(range(max_seeds)), opts.overrides)
    name = opts.name or "until-decided"
    plan, comps = None, []
    for k in range(1, len(design) + 2):
        studies = latest_studies(opts.tracking_uri, grids)
        if studies:
            plan, comps = plan_round(studies, design, max_seeds, alpha)
            if plan.done and all(len(s) >= design[0] for s in finished_seeds(studies).values()):
                break
        row_seeds = row_seeds_for_round(grids, studies, plan, design[0])
        round_opts = dataclasses.replace(opts, name=f"{name}-r{k}", row_seeds=row_seeds)
        if not opts.quiet:
            print(f"tood-ablate: until-decided round {k}: {sum(map(len, row_seeds.values()))} (row, seed) trials, "
                  f"launch {round_opts.name}", file=sys.stderr)
        if (storage_root(opts.storage_path) / round_opts.name / "tood_launch.json").exists():
            continue  # a round of an earlier invocation: the store already holds what it trained
        if not run_suite(grid_paths, round_opts).ok:
            print(f"tood-ablate: round {k} did not finish: `tood-ablate resume {round_opts.name}`, then the same "
                  "command again", file=sys.stderr)
            return 1
    studies, _plan, table = claims_state(opts.tracking_uri, grids, design, max_seeds, alpha)
    out = storage_root(opts.storage_path) / f"{name}_{SEQUENTIAL_ARTIFACT}.md"
    publish_table(opts.tracking_uri, studies, table, out, tagged)
    ui = render_parents([(d.study, d.parent_id) for d in studies], opts.tracking_uri,
                        storage_root(opts.storage_path) / f"{name}_report")  # reads the design just tagged
    if not opts.quiet:
        print(to_markdown(table))
        print(f"tood-ablate: until-decided: table in {out} and on each study's parent run", file=sys.stderr)
        print("tood-ablate: the answer in the MLflow UI:\n" + "\n".join(ui), file=sys.stderr)
    return 0
