"""The orchestrator reads as its parts: no import cycles, and each part uses only the parts
below it (media < pipeline < jobs, commands < web < cli).

Every import counts, also those inside functions: a lazy import is still a dependency.
(services/ has its own cycle test, services/stagekit/tests/test_imports.py.)"""
from __future__ import annotations

from services.stagekit.importgraph import cycles, import_graph

# The orchestrator's parts, lowest first; a part may import its own modules and those of
# lower ranks only. jobs and commands share a rank: neither uses the other.
RANKS = {"errors": 0, "media": 1, "pipeline": 2, "jobs": 3, "commands": 3, "web": 4,
         "cli": 5, "__main__": 6}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle_in_the_orchestrator():
    found = cycles(import_graph("orchestrator"))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)


def test_every_orchestrator_module_belongs_to_a_part():
    for module in import_graph("orchestrator"):
        assert part(module) in RANKS or module == "orchestrator", module


def test_orchestrator_parts_import_only_downwards():
    wrong = []
    for module, targets in import_graph("orchestrator").items():
        for target in targets:
            if "orchestrator" in (module, target) or part(target) == part(module):
                continue
            if RANKS[part(target)] >= RANKS[part(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))

