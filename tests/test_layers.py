"""The import graph: no module imports, directly or through others, a module that imports it.

import-linter (`lint-imports`, run by `make test`) checks the layers; this checks what layers
cannot see: loops inside one layer or inside the service."""

from __future__ import annotations

import grimp
import pytest


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` (module → modules it imports)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_tarjan_finds_a_loop_and_only_it() -> None:
    loops = [sorted(c) for c in strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1]
    assert loops == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["metatune", "metatune_service"])
def test_no_import_loop(package: str) -> None:
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    loops = [sorted(c) for c in strongly_connected(imports) if len(c) > 1]
    assert loops == []
