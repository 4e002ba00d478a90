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


def first_input_types(model) -> dict[str, set[str]]:
    """For every operator type in ``model`` (subgraphs included): the element types of its nodes'
    first inputs (``"FLOAT16"``, ``"INT64"``, ...), after onnx's shape inference; values whose type
    inference cannot tell are left out."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    declared: dict[str, str] = {}
    # The graphs nodes() walks: the main one and every subgraph (an If's branches included).
    graphs = [model.graph] + [
        sub
        for _, node in nodes(model.graph)
        for attribute in node.attribute
        for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs)
    ]
    for graph in graphs:
        for value in [*graph.value_info, *graph.input, *graph.output]:
            if value.type.tensor_type.elem_type:
                declared[value.name] = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        for tensor in graph.initializer:
            declared[tensor.name] = onnx.TensorProto.DataType.Name(tensor.data_type)
    types: dict[str, set[str]] = {}
    for _, node in nodes(model.graph):
        found = types.setdefault(node.op_type, set())
        if node.input and node.input[0] in declared:
            found.add(declared[node.input[0]])
    return types
