"""Reading exported ONNX graphs in tests: nodes inside loop bodies (subgraphs) included."""

from __future__ import annotations

from collections.abc import Iterator


def nodes(graph) -> Iterator[tuple[object, object]]:
    """``(graph, node)`` for every node of ``graph`` and of the subgraphs its nodes hold
    (a ``Scan`` or ``Loop`` body), depth first."""
    import onnx

    for node in graph.node:
        yield graph, node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from nodes(sub)


def elem_type(graph, name: str) -> int:
    """The element type (``onnx.TensorProto`` enum) of value ``name`` declared in ``graph``."""
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.name == name:
            return value.type.tensor_type.elem_type
    raise KeyError(f"{name} has no declared type in graph {graph.name!r}")
