"""The package's layers, read off its source: every `enet_cli` import (those inside
functions too) goes to the importing module's own package or to a layer below, never up
and never to a package beside it, and no imports close a circle (docs/design.md, Layout)."""

import ast
from pathlib import Path
from typing import Dict, Set

from enet_testing import REPO

SRC = REPO / "src" / "enet_cli"
# Bottom (0) to top. Packages on one floor are neighbours: neither imports the other.
FLOORS = {
    "core": 0,
    "pixels": 1,
    "model": 2,
    "data": 2,
    "artifacts": 3,
    "container": 4,
    "serving": 4,
    "train": 5,
    "workflows": 6,
    "cloud": 6,
    "commands": 7,
    "cli": 8,
    "api": 8,
    "__main__": 9,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> Dict[str, Set[str]]:
    """module -> the enet_cli modules it imports (a package's names resolved to modules)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    found: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "enet_cli":
                    continue
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "enet_cli"}
        found[name] = targets
    return found


def _side(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "enet_cli"  # the package face: __version__


def test_imports_go_down_or_stay_in_their_package():
    climbs = []
    for source, targets in _imports().items():
        for target in targets:
            here, there = _side(source), _side(target)
            if here == there or there == "enet_cli":
                continue
            assert here in FLOORS and there in FLOORS, (source, target)  # a new package
            if FLOORS[there] >= FLOORS[here]:
                climbs.append(f"{source} -> {target}")
    assert climbs == []


def test_no_imports_close_a_circle():
    graph = _imports()
    circles = []

    def visit(module: str, path: list) -> None:
        if module in path:
            circles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*path, module])
        done.add(module)

    done: Set[str] = set()
    for module in sorted(graph):
        visit(module, [])
    assert circles == []
