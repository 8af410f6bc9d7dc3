"""The ONNX graph walk: builds a ``Network`` from a model, one operator at a time.

``_Importer.build`` visits the nodes the graph output needs, in order. A ``Constant`` and anything
computed from constants only (except ``Shape``) is folded with onnxruntime itself; every other
node is dispatched through ``HANDLERS``, one registry (ONNX op type -> handler) merged from the
operator family modules:

- ``ops/affine.py``: Gemm, MatMul, Add, Sub, Mul, Div, Neg, Conv, BatchNormalization, AveragePool,
  GlobalAveragePool, ReduceMean, ReduceSum, Cast;
- ``ops/shape.py``: Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Concat, Pad, Slice, Identity,
  Dropout, Shape;
- ``ops/activation.py``: Relu, LeakyRelu, Sigmoid, Tanh, Clip, MaxPool, Softmax, LogSoftmax.

Adding an operator touches one family module: a handler ``(importer, inputs, outputs, attributes)``
returns the value of the first output (a ``_Sym``: ``sum_n W_n v_n + bias`` over nodes already
built, or a ``_Final``) or None when it recorded its outputs itself. Handlers reach the graph
through ``sym``, ``const``, ``value``, ``axes``, ``materialize``, ``unsupported`` and the
``nodes``, ``syms``, ``consts`` lists.

Not supported (``UnsupportedOperator`` names the operator and says why): any operator without a
handler, operators from other domains, and whatever a handler refuses (see each family module).

What a reviewer must check here: constant folding evaluates with the same runtime that runs the
model; ``materialize`` turns a ``_Sym`` into a linear node carrying its float32 facts (``mass``,
``bmass``, ``gsum``, ``abs_exact``) unchanged; only a final Softmax may be dropped, and the output
node is always a new linear node.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from l0tre_core.certify._types import UnsupportedOperator
from l0tre_core.certify.network import Network, Node
from l0tre_core.certify.ops import activation, affine
from l0tre_core.certify.ops import shape as shape_ops
from l0tre_core.certify.ops.activation import _Final
from l0tre_core.certify.ops.affine import _Sym


def _registry(*families: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for fam in families:
        clash = set(out) & set(fam)
        assert not clash, f"operators registered twice: {sorted(clash)}"
        out.update(fam)
    return out


HANDLERS = _registry(affine.HANDLERS, shape_ops.HANDLERS, activation.HANDLERS)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out



class _Importer:
    def __init__(self, model: Any, input_name: str, output_name: str, sample_shape: tuple[int, ...]) -> None:
        self.model = model
        self.graph = model.graph
        self.input_name = input_name
        self.output_name = output_name
        self.sample_shape = sample_shape
        self.opset = 13
        for imp in getattr(model, "opset_import", []):
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.syms: dict[str, Any] = {}
        self.cur_op = ""
        self.cur_name = ""
        self.final_input: str | None = None

    # -- errors ---------------------------------------------------------------------------------
    def unsupported(self, reason: str = "") -> UnsupportedOperator:
        return UnsupportedOperator(self.cur_op, self.cur_name, reason)

    # -- building -----------------------------------------------------------------------------
    def build(self) -> Network:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            self.consts[init.name] = numpy_helper.to_array(init)
        d = int(np.prod(self.sample_shape, dtype=np.int64))
        self.nodes.append(Node("input", [], d, name=self.input_name, shape=self.sample_shape))
        self.syms[self.input_name] = _Sym({0: None}, np.zeros(self.sample_shape), self.sample_shape)
        self.consts.pop(self.input_name, None)

        needed = self._needed_nodes()
        for k, node in enumerate(self.graph.node):
            if k not in needed:
                continue
            self.cur_op = node.op_type
            self.cur_name = node.name or (node.output[0] if node.output else "?")
            self._visit(node)

        self.cur_op, self.cur_name = "output", self.output_name
        if self.output_name in self.consts:
            raise UnsupportedOperator("output", self.output_name, "the output does not depend on the input")
        if self.output_name not in self.syms:
            raise UnsupportedOperator("output", self.output_name, "the graph output is not computed by the graph")
        out = self.syms[self.output_name]
        final = out.op if isinstance(out, _Final) else None
        if isinstance(out, _Final):
            out = out.sym
        out = _Sym(out.terms, out.bias.reshape(-1), (out.size,), out.mass, out.bmass, out.gsum, **out.flags())
        j = self.materialize(out, force_new=True, name=self.output_name)
        self.nodes[j].tensor = self.output_name if final is None else self.final_input
        net = Network(self._prune(), self.sample_shape)
        net.final = final
        return net

    def _needed_nodes(self) -> set[int]:
        producer: dict[str, int] = {}
        nodes = list(self.graph.node)
        for k, node in enumerate(nodes):
            for o in node.output:
                if o:
                    producer[o] = k
        needed: set[int] = set()
        stack = [self.output_name]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            k = producer[name]
            needed.add(k)
            stack.extend(i for i in nodes[k].input if i)
        return needed

    def _prune(self) -> list[Node]:
        keep = {len(self.nodes) - 1, 0}
        for j in range(len(self.nodes) - 1, -1, -1):
            if j in keep:
                keep.update(self.nodes[j].parents)
        order = sorted(keep)
        remap = {old: new for new, old in enumerate(order)}
        out = []
        for old in order:
            nd = self.nodes[old]
            nd.parents = [remap[p] for p in nd.parents]
            out.append(nd)
        return out

    def materialize(self, sym: _Sym, force_new: bool = False, name: str = "") -> int:
        """The node holding ``sym``'s value (a new linear node unless it is one already)."""
        if len(sym.terms) == 1 and not force_new:
            (n, w), = sym.terms.items()
            if w is None and n != 0 and not np.any(sym.bias) and self.nodes[n].size == sym.size:
                return n
        if not sym.terms:
            raise self.unsupported("the value does not depend on the input")
        parents = sorted(sym.terms)
        mats = [sym.terms[p] for p in parents]
        node = Node("linear", parents, sym.size, name=name or self.cur_name, shape=sym.shape,
                    mats=mats, bias=sym.bias.reshape(-1).copy(), mass=[sym.mass[p] for p in parents],
                    bmass=sym.bmass.copy(), gsum=sym.gsum, abs_exact=[sym.exact[p] for p in parents])
        self.nodes.append(node)
        return len(self.nodes) - 1

    def value(self, name: str) -> Any:
        if name in self.consts:
            return self.consts[name]
        if name in self.syms:
            v = self.syms[name]
            if isinstance(v, _Final):
                if self.cur_op in ("Identity",):
                    return v
                raise UnsupportedOperator(v.op, v.name, "only a final Softmax (on the graph output) can be dropped")
            return v
        raise self.unsupported(f"input {name!r} is not produced by a supported node")

    # -- dispatch ---------------------------------------------------------------------------------
    def _visit(self, node: Any) -> None:
        op = node.op_type
        ins = list(node.input)
        outs = [o for o in node.output]
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(f"domain {node.domain!r}")
        a = _attrs(node)

        if op == "Constant":
            self.consts[outs[0]] = self._constant(a)
            return
        # anything computed from constants only is folded
        if all((i == "" or i in self.consts) for i in ins) and op != "Shape":
            self._fold(node)
            return
        handler = HANDLERS.get(op)
        if handler is None:
            raise self.unsupported()
        result = handler(self, ins, outs, a)
        if result is not None:
            self.syms[outs[0]] = result

    # -- operands, for the handlers ---------------------------------------------------------------
    def sym(self, name: str) -> _Sym:
        v = self.value(name)
        if isinstance(v, _Final):
            raise UnsupportedOperator(v.op, v.name, "only a final Softmax (on the graph output) can be dropped")
        if not isinstance(v, _Sym):
            raise self.unsupported("expected an input-dependent operand")
        return v

    def const(self, name: str) -> np.ndarray:
        if name not in self.consts:
            raise self.unsupported(f"operand {name!r} must be a constant")
        return self.consts[name]

    def axes(self, ins: list[str], a: dict[str, Any]) -> list[int] | None:
        """The ``axes`` attribute, or the constant second input (opset 13+), or None."""
        if "axes" in a:
            return [int(v) for v in a["axes"]]
        if len(ins) > 1 and ins[1]:
            return [int(v) for v in self.const(ins[1]).reshape(-1)]
        return None

    # -- constants --------------------------------------------------------------------------------
    def _constant(self, a: dict[str, Any]) -> np.ndarray:
        from onnx import numpy_helper

        if "value" in a:
            return numpy_helper.to_array(a["value"])
        for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64)):
            if key in a:
                return np.array(a[key], dtype=dt)
        raise self.unsupported("Constant without a dense value")

    def _fold(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constants (shape computations and the like) with
        onnxruntime itself: a second evaluator may disagree with the one that runs the model (the
        ONNX reference evaluator computes BatchNormalization up to opset 13 with batch statistics)."""
        import onnx
        import onnxruntime as ort

        ins = [i for i in node.input]
        inputs = []
        feeds = {}
        for i in ins:
            if i == "":
                continue
            arr = self.consts[i]
            inputs.append(onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape)))
            feeds[i] = arr
        outputs = [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
        graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        try:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
            types = {vi.name: vi.type for vi in m.graph.value_info}
            for out in m.graph.output:
                if out.name in types:
                    out.type.CopyFrom(types[out.name])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            res = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)
        except Exception as exc:  # noqa: BLE001 - report as unsupported
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise self.unsupported(f"constant folding in onnxruntime failed ({first})") from exc
        for o, r in zip([o for o in node.output if o], res):
            self.consts[o] = np.asarray(r)
