"""The package's structure (issue 12): imports run one way, the core knows no modality, and no module outside
mmdiff/modalities/ and mmdiff/data/ branches on a modality's name. Read from the source with ``ast``."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmdiff"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (relative imports resolved; ``from a import b`` counts a.b when b
    is a module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_import_graph_has_no_cycles():
    g = graph()
    packages = {n for n, p in modules().items() if p.name == "__init__.py"}
    # a package's __init__ re-exporting its submodules is not a layer going up: leave those edges out
    edges = {n: {m for m in deps if not (n in packages and m.startswith(n + "."))} for n, deps in g.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges[n]):
            assert state.get(m) != 1, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert len(edges) > 50 and sum(map(len, edges.values())) > 150  # the parse found the package


def test_the_core_imports_nothing_above_it():
    for name, deps in graph().items():
        if name.startswith("mmdiff.core"):
            outside = {d for d in deps if not d.startswith("mmdiff.core")}
            assert not outside, f"{name} imports {sorted(outside)}: the diffusion core must not know the layers above"


def test_modality_names_appear_only_in_modalities_and_data():
    word = re.compile(r"""["'](image|audio|video)["']""")
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{i}" for path in PACKAGE.rglob("*.py")
                 if path.relative_to(PACKAGE).parts[0] not in ("modalities", "data")
                 for i, line in enumerate(path.read_text().splitlines(), 1) if word.search(line)]
    assert not offenders, f"modality branches outside mmdiff/modalities and mmdiff/data: {offenders}"
