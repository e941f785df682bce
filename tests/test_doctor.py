"""`tood-ablate doctor` on this CPU machine, healthy and with deliberate faults: each fault is
one PROBLEM line naming what to do, and the exit status is 1."""
import socket

from orchestration.doctor import main

TINY = ["data.synthetic=null", "model.backbone.pretrained=null", "model.backbone.pretrain=null", "data.img_scale=[64, 64]",
        "model.neck_channels=16", "model.head.feat_channels=16", "model.head.gn_groups=4", "model.backbone.base_width=8",
        "train.epochs=2", "train.batch_size=4"]


def _run(capsys, tmp_path, data_root, *args: str) -> tuple[int, list[str]]:
    sets = [a for o in [f"data.root={data_root}", *TINY] for a in ("--set", o)]
    code = main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--storage-path", str(tmp_path / "ray"),
                 *sets, *args])
    return code, capsys.readouterr().out.splitlines()


def _line(lines: list[str], name: str) -> str:
    (line,) = [ln for ln in lines if ln.split(None, 1)[1].startswith(name + ":")]
    return line


def test_healthy_setup_times_the_model_and_projects_the_launch(capsys, tmp_path, tiny_data):
    code, lines = _run(capsys, tmp_path, tiny_data, "--iterations", "1")
    assert code == 0, lines
    assert all(ln.startswith("ok") for ln in lines) and len(lines) == 6
    speed = _line(lines, "speed")
    # 8 training images at batch 4: 2 iterations an epoch, 2 epochs
    assert "(2 iterations x 2 epochs, training only)" in speed and " s/iteration (batch 4, 1 timed)" in speed
    assert f"COCO-format data at {tiny_data}" in _line(lines, "dataset")


def test_no_gpu_for_a_gpu_launch(capsys, tmp_path, tiny_data):
    code, lines = _run(capsys, tmp_path, tiny_data, "--gpus-per-trial", "1", "--iterations", "0")
    assert code == 1
    assert _line(lines, "torch").startswith("PROBLEM") and "needs a CUDA build of torch" in _line(lines, "torch")
    assert _line(lines, "ray").startswith("PROBLEM") and "0 GPUs" in _line(lines, "ray")


def test_unreachable_tracking_server(capsys, tmp_path, tiny_data):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, lines = _run(capsys, tmp_path, tiny_data, "--tracking-uri", f"http://127.0.0.1:{port}", "--iterations", "0")
    assert code == 1
    store = _line(lines, "tracking store")
    assert store.startswith("PROBLEM") and f"127.0.0.1:{port}" in store and "start the MLflow server" in store


def test_bad_dataset(capsys, tmp_path):
    empty = tmp_path / "not_coco"
    empty.mkdir()
    code, lines = _run(capsys, tmp_path, empty, "--iterations", "0")
    assert code == 1
    data = _line(lines, "dataset")
    assert data.startswith("PROBLEM") and str(empty) in data and "data.root" in data
    assert not any(ln.split(None, 1)[1].startswith("speed:") for ln in lines)  # no timed run on a broken setup


def test_unwritable_storage(capsys, tmp_path, tiny_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, lines = _run(capsys, tmp_path, tiny_data, "--storage-path", str(blocker / "ray"), "--iterations", "0")
    assert code == 1
    disk = _line(lines, "disk")
    assert disk.startswith("PROBLEM") and "--storage-path" in disk and "not a folder" in disk
