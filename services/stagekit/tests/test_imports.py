"""The services import one another without a cycle: read from the source (every import
statement, a function's own included), not by importing anything."""
from __future__ import annotations

from services.stagekit.importgraph import cycles, import_graph


def test_the_graph_sees_relative_and_function_level_imports():
    graph = import_graph()
    assert "services.stagekit.stage" in graph["services.stagekit"]          # from .stage import
    assert "services.stagekit.neural" in graph["services.ddcolor.stage"]    # absolute
    assert "services.ddcolor" in graph["services.ddcolor.stage"]            # from . import MODEL
    assert "services.propainter.stage" in graph["services.propainter.bench"]  # inside a function


def test_a_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_services():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)
