"""The layers point one way: ``tood`` <- ``orchestration`` <- ``reports`` <- ``tood_ablate``
(the command). `tood/` is the detector alone (never Ray or MLflow); no module imports a
package above its own, and no import cycle exists between modules, counting imports made
inside functions (a lazy import is still a dependency)."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("tood", "orchestration", "reports", "tood_ablate")  # lowest first


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for p in (ROOT / pkg).rglob("*.py"):
            out[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source (module level or not).
    ``from a import b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import a.b.c` of a non-module attribute path
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                  if rank[b.split(".")[0]] > rank[a.split(".")[0]])


def test_checks_catch_a_cycle_and_an_upward_import():
    # the checks themselves, on a hand-made graph with one of each
    graph = {"tood.a": {"tood.b"}, "tood.b": {"tood.c"}, "tood.c": {"tood.a"}, "tood.d": {"reports.x"},
             "reports.x": {"tood.d"}, "orchestration.y": {"tood.a"}}
    assert sorted(cycles(graph)) == [["reports.x", "tood.d"], ["tood.a", "tood.b", "tood.c"]]
    assert upward_imports(graph) == ["tood.d -> reports.x"]


def test_graph_sees_lazy_and_from_imports(tmp_path):
    pkg = tmp_path / "tood"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from tood import b\n    return b\n")
    (pkg / "b.py").write_text("from tood.a import f\n")
    mods = {"tood": pkg / "__init__.py", "tood.a": pkg / "a.py", "tood.b": pkg / "b.py"}
    graph = import_graph(mods)
    assert graph == {"tood": set(), "tood.a": {"tood.b"}, "tood.b": {"tood.a"}}
    assert cycles(graph) == [["tood.a", "tood.b"]]


def test_no_import_cycle_and_no_upward_import():
    graph = import_graph(_modules())
    assert "orchestration.launch" in graph and "tood_ablate.cli" in graph
    assert cycles(graph) == [], "import cycles"
    assert upward_imports(graph) == [], "imports of a package above the importer's"


def test_tood_never_imports_ray_or_mlflow():
    modules = sorted(m for m in _modules() if m.split(".")[0] == "tood")
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
