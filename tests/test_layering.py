"""`tood/` is the detector alone: importing any of its modules must not pull in Ray or MLflow."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tood_never_imports_ray_or_mlflow():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in (ROOT / "tood").rglob("*.py")
    )
    assert "tood.engine" in modules and "tood.cli" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"tood imported: {out.stdout.strip()}"
    # and no source file names them (a lazy import inside a function would escape the check above)
    for path in (ROOT / "tood").rglob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "from ray" not in text and "import mlflow" not in text and "from mlflow" not in text, path
