"""No import cycle among the package's modules, read statically (ast) from src/psft_lightning.

Every import counts, also one inside a function (a lazy import still ties the modules), and importing
``a.b.c`` also runs the package ``a.b`` (its ``__init__.py``), as Python does; except from inside
``a.b`` itself, whose ``__init__`` is already running then (a package's face re-exporting its rooms).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "psft_lightning"


def module_names() -> dict[str, Path]:
    names = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that importing ``name`` (at ``path``) runs directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        parts = target.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # the packages run first
    running = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # self, ancestors
    return {t for t in found if t in known and t not in running}


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    known = module_names()
    graph = {name: imported(name, path, known) for name, path in known.items()}
    if f"{PACKAGE}.cli" in graph:  # psft's dispatch table imports each subcommand's module when it runs
        from psft_lightning.cli import SUBCOMMANDS

        graph[f"{PACKAGE}.cli"] |= {command.target.partition(":")[0] for command in SUBCOMMANDS.values()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles() == []


def test_the_walk_sees_a_lazy_import_and_a_package_init(tmp_path, monkeypatch):
    """The check itself: a cycle closed by an import inside a function, through a package's __init__;
    a package's own rooms importing each other by absolute path close none."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("def main():\n    from psft_lightning.sub.leaf import x\n")
    (package / "sub" / "__init__.py").write_text("from psft_lightning.sub.middle import y\n")
    (package / "sub" / "middle.py").write_text("from psft_lightning import top\n")
    (package / "sub" / "leaf.py").write_text("x = 1\n")
    (package / "face").mkdir()  # a package's face re-exporting its rooms, which import each other: no cycle
    (package / "face" / "__init__.py").write_text("from psft_lightning.face.a import f\n")
    (package / "face" / "a.py").write_text("from psft_lightning.face.b import g\n")
    (package / "face" / "b.py").write_text("g = 1\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    assert cycles() == [["psft_lightning.sub", "psft_lightning.sub.middle", "psft_lightning.top"]]
