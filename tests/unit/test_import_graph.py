"""The import graph: no module imports one that imports it back, however far round.

import-linter's contracts (`.importlinter`, checked by `lint-imports` in CI) order the layers
and forbid cycles between sibling packages; this test forbids cycles between single modules,
counting imports made inside functions too.
"""

from __future__ import annotations

import grimp
import networkx as nx

ROOTS = ("gateway", "cascades", "routers", "policies")


def _module_graph() -> nx.DiGraph:
    graph = grimp.build_graph(*ROOTS)
    out = nx.DiGraph()
    for module in graph.modules:
        out.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            out.add_edge(module, imported)
    return out


def test_no_module_imports_itself_back() -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(_module_graph()) if len(c) > 1]
    assert cycles == []


def test_the_graph_sees_the_pipeline() -> None:
    # Guards the test above: an empty or broken graph would pass it.
    graph = _module_graph()
    assert graph.has_edge("gateway.pipeline.admit", "gateway.admission.access")
    assert nx.has_path(graph, "gateway.app", "routers.serving.base")
