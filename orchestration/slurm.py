"""``tood-ablate slurm``: an sbatch script that runs a launch on a Ray cluster inside a Slurm allocation.

The script follows Ray's Slurm recipe: one task per node; the Ray head on the allocation's first
node, Ray workers on the others, the driver (``tood-ablate run``) in the batch shell. Each job's
Ray cluster is private to it: its ports and temp dir come from ``$SLURM_JOB_ID`` (two jobs on
one node do not collide) and it uses token authentication with a token made by the job (only the
job's processes, which inherit its environment, can join). The launch record
(``<storage>/<name>/tood_launch.json``) decides between ``run`` and ``resume``, so submitting the
same script again after a cancel or a time limit continues the launch.
"""
from __future__ import annotations

import argparse
import re
import shlex
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestration.folders import check_writable
from orchestration.launch import LaunchOptions, check_options
from orchestration.record import LAUNCH_FILE
from orchestration.uris import normalise_tracking_uri
from tood.config import ConfigError, parse_override

PORT_BASE, PORT_SLOTS, PORTS_PER_JOB = 20000, 4000, 10  # job ports: 20000 + (job id % 4000) * 10 + 0..6
STOP_SIGNAL_S, STOP_GRACE_S = 60, 40  # SIGTERM this long before the time limit; of it, the driver's graceful stop
TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|unlimited|infinite", re.IGNORECASE)  # Slurm's --time forms
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Template(string.Template):
    delimiter = "@"  # bash owns "$"; "@@" is a literal "@"


SCRIPT = _Template("""\
#!/bin/bash
# tood-ablate launch '@name' on a Ray cluster started inside this Slurm allocation.
# Written by: @command
# Submit: sbatch @script -- and the same again after a cancel or a time limit: the launch resumes.
# Output: @log (Ray's own logs: /tmp/tood-ray-<job id> on each node)
@sbatch
set -uo pipefail
export PATH=@bindir:"$PATH"
@setup
storage=@storage
name=@name
driver= ray_steps=

# A private Ray cluster per job: ports and temp dir from the job id (two jobs on one node do not
# collide; worker processes bind ports the OS picks), token authentication with a token made here.
# srun, the driver and its trials inherit this environment; nothing is written to ~/.ray.
port=$((@port_base + SLURM_JOB_ID % @port_slots * @ports_per_job))
ray_tmp=/tmp/tood-ray-$SLURM_JOB_ID
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_hex(32))')"
# No drain wait when a node gets SIGTERM (it is for Ray Serve); the trap stops the driver first.
export RAY_USAGE_STATS_ENABLED=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
ray_node="--num-cpus=$SLURM_CPUS_PER_TASK --num-gpus=@gpus --temp-dir=$ray_tmp --min-worker-port=0 --max-worker-port=0
 --node-manager-port=$((port + 1)) --object-manager-port=$((port + 2)) --dashboard-agent-grpc-port=$((port + 3))
 --dashboard-agent-listen-port=$((port + 4)) --runtime-env-agent-port=$((port + 5)) --metrics-export-port=$((port + 6))
 --disable-usage-stats ${TOOD_RAY_OBJECT_STORE_MB:+--object-store-memory=$((TOOD_RAY_OBJECT_STORE_MB * 1048576))}"

stop() {  # on exit, scancel and the time limit (SIGTERM to this shell @stop_before_s s before it)
    trap - EXIT
    trap '' TERM INT  # a second scancel does not cut the cleanup short (Slurm's SIGKILL ends it after KillWait)
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        # SIGUSR1 is Ray Tune's graceful stop (as Ctrl-C, which a background command ignores): Tune
        # saves its state and the launch marks the unfinished runs KILLED, for the resubmission
        kill -USR1 "$driver"
        for _ in $(seq @grace_s); do kill -0 "$driver" 2>/dev/null || break; sleep 1; done
        kill -KILL "$driver" 2>/dev/null
    fi
    # SIGTERM to the Ray steps: each node's `ray start --block` stops the Ray processes it started
    # there. (srun would turn a SIGTERM of its own into SIGKILL; `ray stop` would stop every Ray
    # instance on the node, other jobs' too.)
    if [ -n "$ray_steps" ]; then
        steps=$(squeue --steps --jobs="$SLURM_JOB_ID" --noheader --format='%i %j' | awk '$2 == "tood-ray" {print $1}')
        scancel --signal=TERM $steps 2>/dev/null || kill -TERM $ray_steps 2>/dev/null
        wait $ray_steps
    fi
    echo "tood-ablate slurm: job $SLURM_JOB_ID: Ray stopped"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
head_ip=$(scontrol -o show node "$head" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
case $head_ip in *[!0-9.]*) head_ip=$(getent ahostsv4 "$head_ip" | awk 'NR == 1 {print $1}') ;; esac
if [ -z "$head_ip" ]; then
    echo "tood-ablate slurm: no IPv4 address for node $head (its NodeAddr in scontrol show node)" >&2
    exit 1
fi
address=$head_ip:$port
echo "tood-ablate slurm: job $SLURM_JOB_ID: Ray head on $head at $address, $SLURM_JOB_NUM_NODES node(s), temp dir $ray_tmp"
srun --overlap --job-name=tood-ray --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" -w "$head" \\
    ray start --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false \\
    $ray_node --block &
ray_steps=$!
workers=$((SLURM_JOB_NUM_NODES - 1))
if [ "$workers" -gt 0 ]; then
    srun --overlap --job-name=tood-ray --nodes="$workers" --ntasks="$workers" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \\
        --exclude="$head" ray start --address="$address" $ray_node --block &
    ray_steps="$ray_steps $!"
fi
for _ in $(seq 120); do  # until every node has joined (`ray status` lists one line per node)
    nodes=$(ray status --address="$address" 2>/dev/null | grep -c '^ 1 node_')
    [ "$nodes" -ge "$SLURM_JOB_NUM_NODES" ] && break
    if ! kill -0 $ray_steps 2>/dev/null; then
        echo "tood-ablate slurm: a Ray node exited while starting (logs: $ray_tmp on each node)" >&2
        exit 1
    fi
    sleep 2
done
echo "tood-ablate slurm: $nodes of $SLURM_JOB_NUM_NODES Ray node(s) up"

if [ -f "$storage/$name/@launch_file" ]; then
    echo "tood-ablate slurm: resuming launch $name"
    tood-ablate resume "$name" --storage-path "$storage" --address "$address" &
else
    tood-ablate run @run_args --name "$name" --storage-path "$storage" --address "$address" &
fi
driver=$!
wait $driver
""")


@dataclass
class SlurmJob:
    """What the script runs (checked by :func:`check`): resources per node, the launch's flags."""

    grids: list[Path]
    name: str
    storage: Path
    tracking_uri: str
    run_flags: list[str]  # `tood-ablate run` flags besides --name, --storage-path, --address
    nodes: int
    cpus_per_node: int
    gpus_per_node: int
    sbatch: tuple[str, ...]  # #SBATCH options besides the resources, e.g. --time=1:00:00, --mem=64G
    setup: tuple[str, ...]  # shell lines run first, e.g. module load cuda
    workdir: Path  # the job's working folder: where the script was written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tood-ablate slurm", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("grid", nargs="+", help="grid files (experiments/*.yaml), as for `tood-ablate run`")
    p.add_argument("--name", required=True, help="launch name; also the Slurm job name and the script's default file name")
    p.add_argument("--storage-path", required=True, help="shared storage every node mounts: Tune state, checkpoints, the job logs")
    p.add_argument("--tracking-uri", required=True, help="MLflow store every node reaches: http(s)://host:port or "
                                                         "sqlite:////abs/path.db on shared storage")
    p.add_argument("--profile", default="proxy", help="config profile of base.yaml")
    p.add_argument("--seeds", help="comma-separated seeds replacing the grid's, e.g. 0,1")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every trial")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the allocation (Ray head on the first)")
    p.add_argument("--cpus-per-node", type=int, default=8, help="CPUs per node, all given to Ray")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, all given to Ray")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="per worker with --workers-per-trial")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed; per worker with --workers-per-trial")
    p.add_argument("--workers-per-trial", type=int, default=1, help="data-parallel Ray Train workers per trial (DDP)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its last checkpoint")
    p.add_argument("--time", help="time limit, in Slurm's forms (e.g. 12:00:00, 2-00:00:00); default: the partition's")
    p.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    p.add_argument("--account", help="Slurm account to charge (default: yours)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH option, repeatable; give it with '=': --sbatch=--mem=64G --sbatch=--qos=long")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run first on the batch node, repeatable, e.g. --setup 'module load cuda/12.1'")
    p.add_argument("--out", help="script to write (default: <name>.sbatch)")
    return p


def _no_blank(flag: str, value: str) -> str:
    """``value`` unless it has whitespace or '%': #SBATCH lines cannot quote, and Slurm expands '%'."""
    if re.search(r"[\s%]", value):
        raise ConfigError(f"{flag} {value}: contains whitespace or '%' (expected a path without them: it goes on an #SBATCH line)")
    return value


def _check_stores(args: argparse.Namespace) -> tuple[Path, str]:
    """``--storage-path`` made absolute and ``--tracking-uri`` normalised, both reachable from every node."""
    storage = Path(_no_blank("--storage-path", args.storage_path)).resolve()
    check_writable(storage, "--storage-path")
    if not args.tracking_uri.lower().startswith(("http://", "https://", "sqlite:")):
        raise ConfigError(f"--tracking-uri {args.tracking_uri}: not a store for a cluster job (expected an MLflow "
                          "server, http(s)://host:port, or sqlite:////abs/path.db on storage every node mounts)")
    uri = normalise_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:"):
        check_writable(Path(uri[len("sqlite:///"):].partition("?")[0]).parent, "--tracking-uri")
    return storage, uri


def _check_resources(args: argparse.Namespace) -> None:
    """Node sizes, per-trial resources that fit on one node (else no trial would ever start), the time limit."""
    for flag, value, low in (("--nodes", args.nodes, 1), ("--cpus-per-node", args.cpus_per_node, 1), ("--gpus-per-node", args.gpus_per_node, 0)):
        if value < low:
            raise ConfigError(f"{flag}: got {value} (expected an integer >= {low})")
    check_options(LaunchOptions(cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                                workers_per_trial=args.workers_per_trial, max_failures=args.max_failures))
    for flag, need, have in (("--cpus-per-trial", args.cpus_per_trial, args.cpus_per_node), ("--gpus-per-trial", args.gpus_per_trial, args.gpus_per_node)):
        if need > have:
            raise ConfigError(f"{flag}: {need:g} does not fit on a node of {have} (expected <= {flag.replace('trial', 'node')})")
    if args.time is not None and not TIME.fullmatch(args.time):
        raise ConfigError(f"--time {args.time}: not a Slurm time (expected minutes, H:M:S, D-H or D-H:M:S, e.g. 1-12:00:00)")


def check(args: argparse.Namespace) -> SlurmJob:
    """The job of ``args``, each input checked before anything is written (ConfigError naming the flag)."""
    from orchestration.grid import expand_grid, parse_seeds

    if not NAME.fullmatch(args.name):
        raise ConfigError(f"--name {args.name}: not a plain name (expected letters, digits, '.', '_', '-')")
    storage, uri = _check_stores(args)
    _check_resources(args)
    for option in args.sbatch:
        if not option.startswith("-") or "\n" in option:
            raise ConfigError(f"--sbatch {option!r}: not an sbatch option (expected one line such as --mem=64G)")
    for line in args.setup:
        if "\n" in line:
            raise ConfigError(f"--setup {line!r}: several lines (expected one line; repeat --setup for more)")
    seeds = parse_seeds(args.seeds)
    overrides = dict(parse_override(o) for o in args.overrides)
    grids = [Path(g).resolve() for g in args.grid]
    for grid in grids:  # the whole grid resolves here, not hours later when the job starts
        expand_grid(grid, args.profile, seeds, overrides)
    flags = ["--tracking-uri", uri, "--profile", args.profile, *(["--seeds", ",".join(map(str, seeds))] if seeds else [])]
    flags += [x for o in args.overrides for x in ("--set", o)]
    flags += ["--cpus-per-trial", f"{args.cpus_per_trial:g}", "--gpus-per-trial", f"{args.gpus_per_trial:g}",
              "--workers-per-trial", str(args.workers_per_trial), "--max-failures", str(args.max_failures)]
    sbatch = [f"{option}={value}" for option, value in (("--time", args.time), ("--partition", args.partition),
                                                        ("--account", args.account)) if value is not None]
    return SlurmJob(grids, args.name, storage, uri, flags, args.nodes, args.cpus_per_node, args.gpus_per_node,
                    (*sbatch, *args.sbatch), tuple(args.setup), Path(_no_blank("the current folder", str(Path.cwd()))))


def render(job: SlurmJob, script: Path, command: str) -> str:
    """The sbatch script of ``job`` written to ``script``; ``command`` wrote it (for its header)."""
    log = job.storage / job.name / "slurm-%j.out"
    sbatch = [f"--job-name={job.name}", f"--nodes={job.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={job.cpus_per_node}",
              *([f"--gpus-per-node={job.gpus_per_node}"] if job.gpus_per_node else []), f"--output={log}",
              f"--chdir={job.workdir}", f"--signal=B:TERM@{STOP_SIGNAL_S}", *job.sbatch]
    return SCRIPT.substitute(
        name=job.name, command=command.replace("\n", "\\n"), script=script, log=log, sbatch="\n".join(f"#SBATCH {o}" for o in sbatch),
        bindir=shlex.quote(str(Path(sys.executable).parent)), setup="\n".join(job.setup),
        storage=shlex.quote(str(job.storage)), port_base=PORT_BASE, port_slots=PORT_SLOTS, ports_per_job=PORTS_PER_JOB,
        gpus=job.gpus_per_node, stop_before_s=STOP_SIGNAL_S, grace_s=STOP_GRACE_S, launch_file=LAUNCH_FILE,
        run_args=shlex.join([*map(str, job.grids), *job.run_flags]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        job = check(args)
        script = Path(args.out or f"{job.name}.sbatch").resolve()
        check_writable(script.parent, "--out")
        script.parent.mkdir(parents=True, exist_ok=True)
        (job.storage / job.name).mkdir(parents=True, exist_ok=True)  # Slurm does not create the --output folder
        script.write_text(render(job, script, shlex.join(["tood-ablate", "slurm", *argv])))
        script.chmod(0o755)
    except ConfigError as e:
        print(f"tood-ablate slurm: error: {e}", file=sys.stderr)
        return 2
    resumes = (job.storage / job.name / LAUNCH_FILE).exists()
    print(f"wrote {script}: submit with `sbatch {script}`; output in {job.storage / job.name}/slurm-<job id>.out"
          + ("\n(the launch exists: the job resumes it)" if resumes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
