"""The house rules of docs/design.md, read from the code itself (ast; no third-party tool).

Layers, bottom to top: libs -> networks -> utils -> dataset -> inference -> training -> the scripts
(train.py, evaluate.py, parse_images.py, export.py) and bench/. A module imports only from its own
package or from a layer below it, the module graph has no cycle (lazy imports count), and an import
inside a function says why in a comment (they exist only to keep an optional dependency, such as
onnxruntime or torch on the deployment path, out of the code paths that do not need it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("libs", "networks", "utils", "dataset", "inference", "training")
SCRIPTS = ("train", "evaluate", "parse_images", "export")
TOP_RANK = len(LAYERS)  # the scripts; bench/ measures them, one above


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project (tests aside), by dotted name."""
    files = {name: root / f"{name}.py" for name in SCRIPTS}
    for package in (*LAYERS, "bench"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def rank(module: str) -> int:
    top = module.split(".")[0]
    if top == "bench":
        return TOP_RANK + 1
    return LAYERS.index(top) if top in LAYERS else TOP_RANK


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """``(module imported, line, lazy)`` for each project module ``path`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, int, bool]] = []

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_block(child):
                continue  # annotations only: never imported at run time
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            else:
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                visit(child, inner)
                continue
            for name in names:
                target = resolve(name)
                if target is not None:
                    found.append((target, child.lineno, lazy))
            if lazy:
                found.append(("<lazy>", child.lineno, True))

    visit(tree, False)
    return found


def graph(root: Path = ROOT) -> tuple[dict[str, list[tuple[str, int, bool]]], dict[str, Path]]:
    files = module_files(root)
    known = set(files)
    return {name: imports_of(path, known) for name, path in files.items()}, files


def upward_imports(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    problems = []
    for module, targets in edges.items():
        for target, line, _ in targets:
            if target == "<lazy>" or target.split(".")[0] == module.split(".")[0]:
                continue
            if rank(target) >= rank(module):
                problems.append(f"{module} (line {line}) imports {target}: a layer at or above its own")
    return problems


def cycles(edges: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from its first module)."""
    found, state, stack = [], {}, []

    def walk(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target, _, _ in edges.get(module, []):
            if target == "<lazy>" or target == module or target not in edges:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            walk(module)
    return found


def uncommented_lazy_imports(files: dict[str, Path], edges) -> list[str]:
    problems = []
    for module, targets in edges.items():
        lines = files[module].read_text(encoding="utf-8").splitlines()
        for target, line, _ in targets:
            if target != "<lazy>":
                continue
            # One comment may speak for a block of imports: on one of its lines, or just above it.
            first = line
            while first > 1 and (
                lines[first - 2].strip().startswith(("import ", "from ")) or not lines[first - 2].strip()
            ):
                first -= 1
            block = lines[first - 1 : line]
            above = lines[first - 2].strip() if first > 1 else ""
            here = lines[line - 1]
            if not any("#" in text for text in block) and not above.startswith("#"):
                problems.append(
                    f"{module} line {line}: an import inside a function without a comment "
                    f"saying why it is lazy: {here.strip()}"
                )
    return problems


def test_no_module_imports_upward_or_in_a_cycle():
    edges, _ = graph()
    assert len(edges) > 40  # the walk found the project
    assert upward_imports(edges) == []
    assert cycles(edges) == []


def test_lazy_imports_say_why():
    edges, files = graph()
    assert uncommented_lazy_imports(files, edges) == []


def test_networks_know_nothing_above_them():
    """The model takes a class count: no label set, data, training or inference module in networks/."""
    edges, _ = graph()
    for module, targets in edges.items():
        if module.startswith("networks"):
            assert {t.split(".")[0] for t, _, _ in targets} <= {"networks", "libs", "<lazy>"}, module


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    for name in (*LAYERS, "bench"):
        for path in (ROOT / name).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name in SCRIPTS:
        (tmp_path / f"{name}.py").write_text(
            (ROOT / f"{name}.py").read_text(encoding="utf-8"), encoding="utf-8"
        )
    return tmp_path


def test_the_checks_catch_an_upward_import_a_cycle_and_a_bare_lazy_import(project_copy: Path):
    labels = project_copy / "utils" / "labels.py"
    labels.write_text(
        labels.read_text(encoding="utf-8") + "\nfrom dataset.layout import split_paths\n", encoding="utf-8"
    )
    edges, files = graph(project_copy)
    assert upward_imports(edges) == [
        f"utils.labels (line {len(labels.read_text().splitlines())}) imports dataset.layout: "
        f"a layer at or above its own"
    ]

    layout = project_copy / "dataset" / "layout.py"
    layout.write_text(
        layout.read_text(encoding="utf-8") + "\nfrom dataset.check import check_dataset\n", encoding="utf-8"
    )
    edges, files = graph(project_copy)
    assert ["dataset.layout", "dataset.check", "dataset.layout"] in cycles(edges)

    layout.write_text(
        layout.read_text(encoding="utf-8") + "\n\ndef later():\n    import dataset.synthetic\n",
        encoding="utf-8",
    )
    edges, files = graph(project_copy)
    assert [p.split(":")[0] for p in uncommented_lazy_imports(files, edges)] == [
        f"dataset.layout line {len(layout.read_text().splitlines())}"
    ]
