"""The code reads as its parts: no import cycles, and each orchestrator part uses only the
parts below it (media < pipeline < jobs, commands < web < cli).

Every import counts, also those inside functions: a lazy import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The orchestrator's parts, lowest first; a part may import its own modules and those of
# lower ranks only. jobs and commands share a rank: neither uses the other.
RANKS = {"errors": 0, "media": 1, "pipeline": 2, "jobs": 3, "commands": 3, "web": 4,
         "cli": 5, "__main__": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, package: str) -> set[str]:
    """The project modules ``path`` imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module_name(path).split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == package}


def graph(package: str) -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")
             if "tests" not in p.relative_to(ROOT).parts}
    edges: dict[str, set[str]] = {}
    for name, path in files.items():
        # "from .x import y" names either a module x.y or an attribute y of x
        edges[name] = {t for t in imports(path, package) if t in files and t != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("package", ["orchestrator", "services"])
def test_no_import_cycle(package):
    found = cycle(graph(package))
    assert found is None, " -> ".join(found)


def test_every_orchestrator_module_belongs_to_a_part():
    for module in graph("orchestrator"):
        assert part(module) in RANKS or module == "orchestrator", module


def test_orchestrator_parts_import_only_downwards():
    wrong = []
    for module, targets in graph("orchestrator").items():
        if module == "orchestrator":
            continue
        for target in targets:
            if target == "orchestrator" or part(target) == part(module):
                continue
            if RANKS[part(target)] >= RANKS[part(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_checks_see_a_cycle_and_a_wrong_direction():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    assert RANKS[part("orchestrator.media.video")] < RANKS[part("orchestrator.pipeline.plan")]
