"""Reading and checking an ONNX file before any runtime sees it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l0tre_core import ModelError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}


def read_model(path: Path) -> Any:
    """Parse and check ``path``; external data is read only from inside the model's folder."""
    import onnx

    # A device, a pipe or a socket (/dev/zero, /dev/stdin) would be read without end.
    if not Path(path).is_file():
        raise ModelError(f"{path} is not a regular file, so not an ONNX model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    if not model.graph.node:
        raise ModelError(f"{path} holds no ONNX graph (is it an ONNX file?)")
    _check_external_data(model, path)
    custom = sorted({n.domain for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise ModelError(
            f"{path.name} uses custom operator domains {', '.join(custom)}; "
            "l0tre runs standard ONNX operators only (export without custom ops)"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path.name} fails the ONNX checker: {_first_line(exc)}") from None
    return model


def _check_external_data(model: Any, path: Path) -> None:
    from onnx.external_data_helper import uses_external_data, load_external_data_for_model

    tensors = [t for t in _all_tensors(model) if uses_external_data(t)]
    if not tensors:
        return
    base = path.parent.resolve()
    for tensor in tensors:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not target.is_relative_to(base) or Path(location).is_absolute():
            raise ModelError(
                f"{path.name} points its external data at {location!r}, outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise ModelError(f"{path.name} needs external data file {location!r}, which is missing")
    try:
        load_external_data_for_model(model, str(base))
    except Exception as exc:
        raise ModelError(f"cannot read the external data of {path.name}: {_first_line(exc)}") from None


def _all_tensors(model: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def graph_inputs(model: Any) -> list[Any]:
    """The real inputs: graph inputs that are not initialisers."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def declared_shape(value_info: Any) -> tuple[Any, ...]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return tuple(dims)


def make_batch_symbolic(model: Any, input_name: str, output_name: str) -> Any:
    """A copy of ``model`` whose batch dimension is symbolic, with batch-1 reshapes loosened.

    Exporters bake batch 1 into Reshape targets; a target starting with 1 becomes 0 ("copy the
    input's batch") when it also has a -1, else -1. The result must still be validated by
    comparing a batched run against single runs: the rewrite is a guess about the graph.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in (input_name, output_name):
            dims = vi.type.tensor_type.shape.dim
            if dims:
                dims[0].Clear()
                dims[0].dim_param = "N"
    del m.graph.value_info[:]
    shape_sources = {n.input[1] for n in m.graph.node if n.op_type == "Reshape" and len(n.input) > 1}

    def loosen(arr: Any) -> Any | None:
        if arr.ndim != 1 or arr.size < 2 or arr[0] != 1:
            return None
        out = arr.copy()
        out[0] = 0 if (-1 in arr[1:]) else -1
        return out

    for init in m.graph.initializer:
        if init.name in shape_sources:
            new = loosen(numpy_helper.to_array(init))
            if new is not None:
                init.CopyFrom(numpy_helper.from_array(new.astype(np.int64), init.name))
    for node in m.graph.node:
        if node.op_type == "Constant" and node.output[0] in shape_sources:
            for attr in node.attribute:
                if attr.name == "value":
                    new = loosen(numpy_helper.to_array(attr.t))
                    if new is not None:
                        attr.t.CopyFrom(numpy_helper.from_array(new.astype(np.int64)))
    return m
