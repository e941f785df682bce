"""`tood-ablate slurm`: the sbatch script it writes, that script run by bash against stand-ins for
Slurm and Ray, and (slow) the smoke grid as a job of a real one-node Slurm cluster on 127.0.0.1.

The slow tests start munged, slurmctld and slurmd from Debian's ``munge`` and ``slurm-wlm`` with
every file under a folder of their own, in their own sessions, and stop them by their recorded
process ids; without the packages (or without root, which slurmd needs) they skip.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestration.slurm import PORT_BASE, PORT_SLOTS, PORTS_PER_JOB, main
from tests.test_cluster import Service, _free_port, _port_open
from tests.test_orchestration import _steps, _study_runs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments/smoke.yaml"
BIN = Path(sys.executable).parent


def _write(tmp_path: Path, monkeypatch, *extra: str, name: str = "abl") -> tuple[int, Path]:
    monkeypatch.chdir(tmp_path)
    code = main([str(SMOKE), "--name", name, "--storage-path", "shared", "--tracking-uri", "http://127.0.0.1:5000", *extra])
    return code, tmp_path / f"{name}.sbatch"


FULL = ("--profile", "proxy_long", "--seeds", "0,1", "--set", "train.epochs=1", "--set", "model.backbone.pretrained=/w/r 50.pth",
        "--nodes", "2", "--cpus-per-node", "4", "--gpus-per-node", "2", "--cpus-per-trial", "2", "--gpus-per-trial", "0.5",
        "--time", "1-00:00:00", "--partition", "gpu", "--account", "lab", "--sbatch=--mem=64G", "--setup", "module load cuda/12.1")


def test_script_for_given_flags(tmp_path, monkeypatch, capsys):
    code, script = _write(tmp_path, monkeypatch, *FULL)
    assert code == 0 and f"wrote {script}: submit with `sbatch {script}`" in capsys.readouterr().out
    text = script.read_text()
    assert [line for line in text.splitlines() if line.startswith("#SBATCH")] == [
        "#SBATCH --job-name=abl", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=4",
        "#SBATCH --gpus-per-node=2", f"#SBATCH --output={tmp_path}/shared/abl/slurm-%j.out", f"#SBATCH --chdir={tmp_path}",
        "#SBATCH --signal=B:TERM@60", "#SBATCH --time=1-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
        "#SBATCH --mem=64G"]
    assert (tmp_path / "shared/abl").is_dir()  # sbatch does not create the folder of --output
    lines = text.splitlines()
    start = lines.index(f'export PATH={BIN}:"$PATH"')
    assert lines[start + 1:start + 4] == ["module load cuda/12.1", f"storage={tmp_path}/shared", "name=abl"]
    launch = text[text.index('if [ -f "$storage/$name/tood_launch.json" ]'):]
    assert launch.splitlines() == [
        'if [ -f "$storage/$name/tood_launch.json" ]; then',
        '    echo "tood-ablate slurm: resuming launch $name"',
        '    tood-ablate resume "$name" --storage-path "$storage" --address "$address" &',
        "else",
        f"    tood-ablate run {SMOKE} --tracking-uri http://127.0.0.1:5000 --profile proxy_long --seeds 0,1 --set train.epochs=1 "
        "--set 'model.backbone.pretrained=/w/r 50.pth' --cpus-per-trial 2 --gpus-per-trial 0.5 --workers-per-trial 1 "
        '--max-failures 2 --name "$name" --storage-path "$storage" --address "$address" &',
        "fi", "driver=$!", "wait $driver"]
    assert "port=$((20000 + SLURM_JOB_ID % 4000 * 10))" in lines and "ray_tmp=/tmp/tood-ray-$SLURM_JOB_ID" in lines
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\"$(python -c 'import secrets; print(secrets.token_hex(32))')\"" in lines
    assert '    ray start --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false \\' in lines
    assert 'ray_node="--num-cpus=$SLURM_CPUS_PER_TASK --num-gpus=2 --temp-dir=$ray_tmp --min-worker-port=0 --max-worker-port=0' in lines
    assert lines[lines.index("trap stop EXIT"):][:3] == ["trap stop EXIT", "trap 'exit 143' TERM", "trap 'exit 130' INT"]
    stop = text[text.index("stop() {"):text.index("trap stop EXIT")]
    assert stop.index('kill -USR1 "$driver"') < stop.index("scancel --signal=TERM $steps") < stop.index("wait $ray_steps")
    assert "ray stop" not in stop.replace("`ray stop` would", "")  # ray stop would end other jobs' Ray too
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_defaults_relative_paths_and_the_out_flag(tmp_path, monkeypatch, capsys):
    code, _ = _write(tmp_path, monkeypatch, "--out", "jobs/x.sbatch", "--tracking-uri", "sqlite:///store/mlruns.db")
    assert code == 0 and "relative sqlite path resolved" in capsys.readouterr().err
    lines = (tmp_path / "jobs/x.sbatch").read_text().splitlines()
    assert [line for line in lines if line.startswith("#SBATCH --")][1:4] == [
        "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8"]
    assert not any(line.startswith(("#SBATCH --gpus", "#SBATCH --time", "#SBATCH --partition")) for line in lines)
    assert f"storage={tmp_path}/shared" in lines
    assert any(line.startswith(f"    tood-ablate run {SMOKE} --tracking-uri sqlite:///{tmp_path}/store/mlruns.db --profile proxy "
                               "--cpus-per-trial 1 --gpus-per-trial 0 ") for line in lines)


@pytest.mark.parametrize("args, message", [
    (("--storage-path", "/tmp/with space"), "--storage-path /tmp/with space: contains whitespace or '%'"),
    (("--tracking-uri", "file:///tmp/mlruns"), "--tracking-uri file:///tmp/mlruns: not a store for a cluster job"),
    (("--tracking-uri", "mlruns"), "--tracking-uri mlruns: not a store for a cluster job"),
    (("--tracking-uri", "sqlite:/x.db"), "--tracking-uri sqlite:/x.db: malformed sqlite URI"),
    (("--name", "my run"), "--name my run: not a plain name"),
    (("--nodes", "0"), "--nodes: got 0 (expected an integer >= 1)"),
    (("--cpus-per-node", "2", "--cpus-per-trial", "4"), "--cpus-per-trial: 4 does not fit on a node of 2"),
    (("--gpus-per-trial", "1"), "--gpus-per-trial: 1 does not fit on a node of 0"),
    (("--cpus-per-trial", "0"), "--cpus-per-trial: got 0 (expected > 0 when --gpus-per-trial is 0)"),
    (("--time", "2 hours"), "--time 2 hours: not a Slurm time"),
    (("--sbatch", "mem=64G"), "--sbatch 'mem=64G': not an sbatch option"),
    (("--setup", "module load a\nmodule load b"), "several lines (expected one line; repeat --setup for more)"),
    (("--seeds", "a,b"), "--seeds: got 'a,b' (expected comma-separated integers"),
    (("--set", "model.head.type=nope"), "model.head.type"),
    (("--profile", "nope"), "unknown profile 'nope'"),
])
def test_input_errors(tmp_path, monkeypatch, capsys, args, message):
    code, script = _write(tmp_path, monkeypatch, *args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("tood-ablate slurm: error: ") and message in err and err.count("\n") == 1, err
    assert not script.exists() and not (tmp_path / "shared").exists()


def test_missing_grid_is_an_input_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["nope.yaml", "--name", "a", "--storage-path", "s", "--tracking-uri", "http://h:5000"]) == 2
    assert f"{tmp_path}/nope.yaml: cannot read grid file" in capsys.readouterr().err


# ------------------------------------------------------- the script in bash, with stand-ins

STUBS = {  # each records its arguments (and, where Ray or the driver would read them, the auth settings)
    "scontrol": """case "$*" in
  "show hostnames n[1-2]") printf 'n1\\nn2\\n' ;;
  "-o show node n1") echo "NodeName=n1 Arch=x86_64 NodeAddr=10.0.0.1 NodeHostName=n1 Version=22.05.8" ;;
  *) exit 1 ;;
esac""",
    "srun": """trap 'echo "srun TERM" >> "$STUB_LOG"; exit 0' TERM
echo "srun $* | $RAY_AUTH_MODE $RAY_AUTH_TOKEN" >> "$STUB_LOG"
[ -n "${STUB_SRUN_FAILS:-}" ] && exit 1
echo $$ >> "$STUB_DIR/srun.pids"
while :; do sleep 0.1; done""",
    "squeue": """printf '4321.0 tood-ray\\n4321.1 tood-ray\\n4321.batch batch\\n'""",
    "scancel": """echo "scancel $*" >> "$STUB_LOG"; kill -TERM $(cat "$STUB_DIR/srun.pids")""",
    "ray": """echo Active:  # a node is up once its srun stand-in runs
for pid in $(cat "$STUB_DIR/srun.pids" 2>/dev/null); do echo " 1 node_$pid"; done""",
    "tood-ablate": """echo "tood-ablate $* | $RAY_AUTH_MODE $RAY_AUTH_TOKEN" >> "$STUB_LOG"
[ -z "${STUB_DRIVER_HANGS:-}" ] && exit 0
trap 'echo "driver USR1" >> "$STUB_LOG"; exit 1' USR1
touch "$STUB_DIR/driver.up"
while :; do sleep 0.1; done""",
}
ADDRESS = "10.0.0.1:23210"  # head's NodeAddr; 20000 + 4321 % 4000 * 10


@pytest.fixture
def stubbed(tmp_path, monkeypatch):
    """The script for 2 nodes of 4 CPUs, and how to run it as job 4321 with Slurm, Ray and the
    driver replaced by the stand-ins above; returns (exit status, the stand-ins' log lines)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}\n")
        (stubs / name).chmod(0o755)
    code, script = _write(tmp_path, monkeypatch, "--nodes", "2", "--cpus-per-node", "4", "--setup", f'export PATH={stubs}:"$PATH"')
    assert code == 0
    env = {**os.environ, "SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2",
           "SLURM_CPUS_PER_TASK": "4", "TOOD_RAY_OBJECT_STORE_MB": "100", "STUB_LOG": str(tmp_path / "log"), "STUB_DIR": str(stubs)}

    def run(stop_after_start: bool = False, **extra: str) -> tuple[int, list[str]]:
        (tmp_path / "log").write_text("")
        (stubs / "srun.pids").unlink(missing_ok=True)
        proc = subprocess.Popen(["bash", str(script)], env={**env, **extra}, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            if stop_after_start:  # as Slurm at the time limit: SIGTERM to the batch shell alone
                deadline = time.monotonic() + 30
                while not (stubs / "driver.up").exists():
                    assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
                    time.sleep(0.1)  # polling interval
                proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode, (tmp_path / "log").read_text().splitlines() + ["--- output", *out.splitlines()]

    return run, tmp_path / "shared"


RAY_NODE = ("--num-cpus=4 --num-gpus=0 --temp-dir=/tmp/tood-ray-4321 --min-worker-port=0 --max-worker-port=0 --node-manager-port=23211 "
            "--object-manager-port=23212 --dashboard-agent-grpc-port=23213 --dashboard-agent-listen-port=23214 "
            "--runtime-env-agent-port=23215 --metrics-export-port=23216 --disable-usage-stats --object-store-memory=104857600")


def _split_auth(lines: list[str]) -> tuple[list[str], set[str]]:
    """The recorded commands, and the set of `RAY_AUTH_MODE RAY_AUTH_TOKEN` values they ran with."""
    return [line.partition(" | ")[0] for line in lines], {line.partition(" | ")[2] for line in lines if " | " in line}


def test_script_starts_ray_runs_the_launch_and_stops_ray(stubbed):
    run, storage = stubbed
    code, lines = run()
    assert code == 0, lines
    commands, auth = _split_auth(lines[:lines.index("--- output")])
    assert sorted(commands[:2]) == sorted([
        f"srun --overlap --job-name=tood-ray --nodes=1 --ntasks=1 --cpus-per-task=4 -w n1 ray start --head "
        f"--node-ip-address=10.0.0.1 --port=23210 --include-dashboard=false {RAY_NODE} --block",
        f"srun --overlap --job-name=tood-ray --nodes=1 --ntasks=1 --ntasks-per-node=1 --cpus-per-task=4 --exclude=n1 "
        f"ray start --address={ADDRESS} {RAY_NODE} --block"])
    assert commands[2:] == [
        f"tood-ablate run {SMOKE} --tracking-uri http://127.0.0.1:5000 --profile proxy --cpus-per-trial 1 --gpus-per-trial 0 "
        f"--workers-per-trial 1 --max-failures 2 --name abl --storage-path {storage} --address {ADDRESS}",
        "scancel --signal=TERM 4321.0 4321.1", "srun TERM", "srun TERM"]
    # head, workers and driver share one token made by the job
    (one,) = auth
    mode, token = one.split()
    assert mode == "token" and re.fullmatch(r"[0-9a-f]{64}", token)
    assert "tood-ablate slurm: 2 of 2 Ray node(s) up" in lines and "tood-ablate slurm: job 4321: Ray stopped" in lines


def test_script_resumes_an_existing_launch(stubbed):
    run, storage = stubbed
    (storage / "abl/tood_launch.json").write_text("{}")
    code, lines = run()
    assert code == 0, lines
    assert f"tood-ablate resume abl --storage-path {storage} --address {ADDRESS}" in _split_auth(lines)[0]
    assert "tood-ablate slurm: resuming launch abl" in lines


def test_sigterm_stops_the_driver_gracefully_then_ray(stubbed):
    run, _ = stubbed
    code, lines = run(stop_after_start=True, STUB_DRIVER_HANGS="1")
    assert code == 143, lines
    commands = _split_auth(lines)[0]
    assert commands[commands.index("driver USR1"):commands.index("--- output")] == [
        "driver USR1", "scancel --signal=TERM 4321.0 4321.1", "srun TERM", "srun TERM"]


def test_a_ray_node_that_exits_ends_the_job(stubbed):
    run, _ = stubbed
    code, lines = run(STUB_SRUN_FAILS="1")
    assert code == 1 and "tood-ablate slurm: a Ray node exited while starting (logs: /tmp/tood-ray-4321 on each node)" in lines
    assert not any(line.startswith("tood-ablate run") for line in lines)


# ------------------------------------------------------- a real one-node Slurm cluster (slow)

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")
SLURM_CONF = """\
ClusterName=toodtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={run}/munge/munge.socket.2
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={run}/state
SlurmdSpoolDir={run}/spool
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={run}/slurmctld.log
SlurmdLogFile={run}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
FirstJobId={first_job}
MinJobAge=600
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _first_job_id() -> int:
    """A first job id whose job and the next one get free Ray ports and no existing temp dir."""
    for _ in range(200):
        first = random.randrange(100_000, 900_000)
        jobs = (first, first + 1)
        ports = [PORT_BASE + j % PORT_SLOTS * PORTS_PER_JOB + k for j in jobs for k in range(7)]
        if all(map(_free, ports)) and not any(Path(f"/tmp/tood-ray-{j}").exists() for j in jobs):
            return first
    raise AssertionError("no first job id with free Ray ports")


def _ray_pids(job: str) -> list[int]:
    """Processes of the Ray cluster of ``job`` (every one names its temp dir)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if f"/tmp/tood-ray-{job}/" in line or line.endswith(f"/tmp/tood-ray-{job}")]


@dataclass
class SlurmCluster:
    env: dict[str, str]
    jobs: list[str] = field(default_factory=list)

    def cmd(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)

    def submit(self, script: Path) -> str:
        out = self.cmd("sbatch", "--parsable", str(script))
        assert out.returncode == 0, out.stderr
        self.jobs.append(out.stdout.strip())
        return self.jobs[-1]

    def state(self, job: str) -> str:
        found = re.search(r"JobState=(\S+)", self.cmd("scontrol", "-o", "show", "job", job).stdout)
        return found.group(1) if found else "UNKNOWN"

    def wait_ended(self, job: str, timeout: float, log: Path) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(job)) not in ENDED:
            assert time.monotonic() < deadline, f"job {job} {state} after {timeout} s: {log.read_text()[-4000:] if log.exists() else ''}"
            time.sleep(1)  # polling interval
        return state

    def port(self, job: str) -> int:
        return PORT_BASE + int(job) % PORT_SLOTS * PORTS_PER_JOB

    def assert_ray_gone(self, job: str) -> None:
        """Nothing is left of the job's Ray cluster: no process names its temp dir, its GCS port is closed."""
        deadline = time.monotonic() + 30
        while (_ray_pids(job) or _port_open(self.port(job))) and time.monotonic() < deadline:
            time.sleep(0.5)  # the step's processes may still be exiting
        assert not _ray_pids(job) and not _port_open(self.port(job)), f"Ray processes of job {job} left: {_ray_pids(job)}"


def _start_or_skip(service: Service, ready, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if service.proc.poll() is not None or time.monotonic() > deadline:
            excerpt = "\n".join(p.read_text()[-1500:] for p in [service.log, *logs] if p.exists())
            pytest.skip(f"{what} did not start in this container: {excerpt}")
        time.sleep(0.5)  # polling interval


def _stop_all(services: list[Service]) -> None:
    """Stop every service, the last started first, even if stopping one fails."""
    errors = []
    for service in reversed(services):
        try:
            service.stop()
        except AssertionError as e:
            errors.append(str(e))
    assert not errors, errors


@pytest.fixture
def slurm():
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)} missing; apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs")
    # A short path under /tmp: munged's socket path has a length limit, and munged wants every
    # folder above its socket searchable by all (pytest's tmp folders are not).
    run = Path(tempfile.mkdtemp(prefix="tood-slurm-", dir="/tmp"))
    run.chmod(0o711)
    (run / "munge").mkdir(mode=0o711)
    for sub in ("state", "spool"):
        (run / sub).mkdir()
    key = run / "munge/munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = run / "slurm.conf"
    conf.write_text(SLURM_CONF.format(run=run, ctld_port=_free_port(), slurmd_port=_free_port(), first_job=_first_job_id()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "TOOD_FAIL_ONCE_AT_EPOCH", "TOOD_FAIL_ONCE_TRIAL"):
        env.pop(k, None)
    # sbatch passes this environment on to the job. As in test_cluster, Ray keeps every address on
    # 127.0.0.1 (the head's is the node's NodeAddr, 127.0.0.1, anyway).
    env.update(SLURM_CONF=str(conf), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", TOOD_RAY_OBJECT_STORE_MB="100", PYTHONUNBUFFERED="1")
    cluster, started = SlurmCluster(env), []
    try:
        munged = Service(["munged", "--foreground", f"--socket={run}/munge/munge.socket.2", f"--key-file={key}",
                          f"--pid-file={run}/munge/munged.pid", f"--log-file={run}/munge/munged.log",
                          f"--seed-file={run}/munge/munged.seed"], run / "munged.out", env)
        started.append(munged)
        _start_or_skip(munged, (run / "munge/munge.socket.2").exists, "munged", [run / "munge/munged.log"])
        started.append(Service(["slurmctld", "-D", "-f", str(conf)], run / "slurmctld.out", env))
        started.append(Service(["slurmd", "-D", "-N", "localhost", "-f", str(conf)], run / "slurmd.out", env))
        _start_or_skip(started[-1], lambda: cluster.cmd("sinfo", "-h", "-o", "%T").stdout.strip() == "idle",
                       "slurmctld/slurmd", [started[1].log, run / "slurmctld.log", run / "slurmd.log"])
        yield cluster
    finally:
        try:
            for job in cluster.jobs:
                cluster.cmd("scancel", job)
            for job in cluster.jobs:
                cluster.wait_ended(job, 120, Path("/dev/null"))
        finally:
            _stop_all(started)
        for job in cluster.jobs:
            for pid in _ray_pids(job):  # only if the job's own cleanup failed; the tests assert it did not
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(f"/tmp/tood-ray-{job}", ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def _slurm_script(tmp_path: Path, monkeypatch, name: str, epochs: int) -> tuple[Path, str]:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert main([str(SMOKE), "--name", name, "--storage-path", "shared", "--tracking-uri", uri, "--cpus-per-node", "2",
                 "--set", f"train.epochs={epochs}", "--time", "15"]) == 0
    return tmp_path / f"{name}.sbatch", uri


@pytest.mark.slow
def test_smoke_grid_as_a_slurm_job(slurm, tmp_path, monkeypatch):
    script, uri = _slurm_script(tmp_path, monkeypatch, "slurm-smoke", epochs=1)
    t0 = time.monotonic()
    job = slurm.submit(script)
    log = tmp_path / f"shared/slurm-smoke/slurm-{job}.out"
    assert slurm.wait_ended(job, 600, log) == "COMPLETED", log.read_text()[-4000:]
    print(f"slurm job wall time: {time.monotonic() - t0:.1f} s")
    text = log.read_text()
    assert f"Ray head on localhost at 127.0.0.1:{slurm.port(job)}, 1 node(s)" in text and "1 of 1 Ray node(s) up" in text
    assert "tood-ablate: slurm-smoke: trials by status {'FINISHED': 2}" in text and text.rstrip().endswith("Ray stopped")
    assert "ExitCode=0:0" in slurm.cmd("scontrol", "-o", "show", "job", job).stdout

    client, parents, children = _study_runs(uri)
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].info.run_name == "slurm-smoke"
    assert set(children) == {"head=parallel,assigner=atss,seed=0", "head=t_head,assigner=tal,seed=0"}
    for run in children.values():
        assert run.info.status == "FINISHED" and run.data.tags["tood.attempts"] == "1" and _steps(client, run) == [1]
    # the trials ran in the job's own Ray cluster, which is gone with the job
    assert list(Path(f"/tmp/tood-ray-{job}").glob("session_*/logs/worker-*"))
    slurm.assert_ray_gone(job)


@pytest.mark.slow
def test_cancelled_job_resumes_when_the_script_is_submitted_again(slurm, tmp_path, monkeypatch):
    script, uri = _slurm_script(tmp_path, monkeypatch, "slurm-cut", epochs=3)
    first = slurm.submit(script)
    log = tmp_path / f"shared/slurm-cut/slurm-{first}.out"
    deadline, running = time.monotonic() + 300, []
    while not running:  # cancel once a trial has started
        assert time.monotonic() < deadline and slurm.state(first) not in ENDED, log.read_text()[-4000:]
        if (tmp_path / "shared/slurm-cut/tood_launch.json").exists():
            running = [r for r in _study_runs(uri)[2].values() if r.info.status == "RUNNING"]
        time.sleep(0.5)  # polling interval of the store
    assert slurm.cmd("scancel", first).returncode == 0
    assert slurm.wait_ended(first, 120, log) == "CANCELLED"
    slurm.assert_ray_gone(first)
    _, _, before = _study_runs(uri)
    assert len(before) == 2 and any(r.info.status != "FINISHED" for r in before.values())

    t0 = time.monotonic()
    second = slurm.submit(script)
    log = tmp_path / f"shared/slurm-cut/slurm-{second}.out"
    assert slurm.wait_ended(second, 600, log) == "COMPLETED", log.read_text()[-4000:]
    print(f"resumed slurm job wall time: {time.monotonic() - t0:.1f} s")
    assert "tood-ablate slurm: resuming launch slurm-cut" in log.read_text()
    client, parents, after = _study_runs(uri)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert set(after) == set(before) and all(r.info.status == "FINISHED" for r in after.values())
    for run in after.values():
        assert set(_steps(client, run)) == {1, 2, 3} and "AP" in run.data.metrics
    exp = client.get_experiment_by_name("tood-ablate/smoke")
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    slurm.assert_ray_gone(second)
