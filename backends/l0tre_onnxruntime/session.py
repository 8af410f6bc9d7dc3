"""ONNX Runtime sessions: provider choice, batch handling and the run loop."""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l0tre_core import BackendOptions, EnvironmentProblem, ModelError, UsageError
from l0tre_onnxruntime.graph import declared_shape, graph_inputs, make_batch_symbolic, read_model

CHECK_BATCH = 3


def check_single_ort_install() -> None:
    """Refuse to run when both onnxruntime wheels are installed: they overwrite each other's files."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            importlib.metadata.version(dist)
            found.append(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(found) == 2:
        raise EnvironmentProblem(
            "both onnxruntime and onnxruntime-gpu are installed and break each other",
            hint="pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu (GPU) or onnxruntime (CPU)",
        )


def _providers(device: str, available: list[str]) -> list[Any]:
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"`device` must be auto, cpu or cuda, got {device!r}", field="device")
    cuda_ok = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda_ok:
        raise EnvironmentProblem(
            "`device` cuda was asked for but this onnxruntime has no CUDA provider",
            hint="install the GPU stack: pip install 'l0tre[gpu]' (see the README), or use `device` cpu",
            field="device",
        )
    if device == "cpu" or not cuda_ok:
        return ["CPUExecutionProvider"]
    cuda_opts = {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested", "use_tf32": 0}
    return [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]


@dataclass
class OrtRuntime:
    session: Any
    input_name: str
    input_shape: tuple[Any, ...]
    output_name: str
    output_shape: tuple[Any, ...]
    providers: list[str]
    batching: str
    onnx_model: Any
    metadata: dict[str, str]
    notes: list[str] = field(default_factory=list)
    session_options: dict[str, Any] = field(default_factory=dict)  # recorded with results: certificates assume them
    _binder: Any = field(default=None, repr=False)

    def run(self, batch: Any) -> np.ndarray:
        if type(batch).__module__.startswith("cupy"):
            return self._run_device(batch)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.batching == "loop":
            outs = [self._run_session(x[i : i + 1]) for i in range(len(x))]
            return _per_sample(np.concatenate(outs), len(x), x.shape).astype(np.float32, copy=False)
        out = self._run_session(x)
        return _per_sample(np.asarray(out, np.float32), len(x), x.shape)

    def _run_session(self, x: np.ndarray) -> np.ndarray:
        # A graph that loads can still fail on real inputs (a Reshape that only fits some batch
        # sizes, ...): that is a fault of the model, not a crash of l0tre.
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise ModelError(
                f"onnxruntime failed to run the model on a batch of shape {list(x.shape)}: {_first_line(exc)}"
            ) from None

    def run_bound(self, batch: Any) -> Any:
        """Outputs ``[N, K]`` left where ``batch`` lives, through IOBinding: a CuPy batch on a CUDA
        session is read and written in device memory (no host round trip); a NumPy batch is bound
        as host OrtValues on the CPU provider, the same code path (tested everywhere). The result
        lives in a buffer reused by the next call: reduce or copy it before calling again."""
        if self.batching == "loop":
            if type(batch).__module__.startswith("cupy"):
                import cupy

                return cupy.asarray(self.run(batch))
            return self.run(batch)
        if self._binder is None:
            self._binder = IoBinder(self.session, self.input_name, self.output_name, self.output_shape)
        try:
            return self._binder.run(batch, cuda="CUDAExecutionProvider" in self.providers)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"onnxruntime failed to run the model on a batch of shape {list(batch.shape)}: {_first_line(exc)}"
            ) from None

    def _run_device(self, batch: Any) -> np.ndarray:
        """A CuPy batch: bound in place on the GPU when the session runs on CUDA, outputs copied
        back to the host."""
        import cupy

        if "CUDAExecutionProvider" not in self.providers or self.batching == "loop":
            return self.run(cupy.asnumpy(batch))
        return np.asarray(cupy.asnumpy(self.run_bound(batch)), np.float32)


class IoBinder:
    """One session's IOBinding: input and output buffers bound by address, reused across calls.

    CUDA (a CuPy batch on a session whose provider is CUDA): the batch is bound where it lies,
    the output goes to a CuPy buffer that stays on the device. CuPy and onnxruntime each have their
    own stream, so both hand-offs are synchronised explicitly: CuPy's stream before onnxruntime
    reads the batch, onnxruntime's outputs (``synchronize_outputs``) before CuPy reads them.

    CPU (a NumPy batch): the batch and a preallocated NumPy output are bound as host OrtValues, so
    this same code path runs, and is tested, on machines without a GPU. Where the output's shape is
    not known before the run (symbolic dimensions other than the batch), onnxruntime allocates it.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, output_shape: tuple[Any, ...]) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        rest = tuple(output_shape[1:])
        self.out_rest = rest if all(isinstance(d, int) for d in rest) else None
        self.binding = session.io_binding()
        self._out: Any = None  # the output buffer, grown to the largest batch seen

    def _output(self, xp: Any, n: int) -> Any:
        if self._out is None or self._out.shape[0] < n or type(self._out).__module__ != xp.__name__:
            self._out = xp.empty((n, *self.out_rest), dtype=xp.float32)
        return self._out[:n]

    def run(self, batch: Any, cuda: bool) -> Any:
        import onnxruntime as ort

        on_device = type(batch).__module__.startswith("cupy")
        if on_device and cuda:
            import cupy

            x = cupy.ascontiguousarray(batch, dtype=cupy.float32)
            dev = x.device.id
            self.binding.bind_input(self.input_name, "cuda", dev, np.float32, tuple(x.shape), x.data.ptr)
            if self.out_rest is not None:
                out = self._output(cupy, len(x))
                self.binding.bind_output(self.output_name, "cuda", dev, np.float32, tuple(out.shape), out.data.ptr)
            else:
                self.binding.bind_output(self.output_name, "cuda", dev)
            cupy.cuda.get_current_stream().synchronize()  # the batch is written before ORT reads it
            self.binding.synchronize_inputs()
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()  # ORT's stream is done before CuPy reads the output
            if self.out_rest is None:
                out = cupy.asarray(self.binding.copy_outputs_to_cpu()[0])
            return _per_sample_any(out, len(x), tuple(x.shape))
        if on_device:  # a CuPy batch but a CPU session: one copy to the host each way
            import cupy

            return cupy.asarray(self.run(cupy.asnumpy(batch), cuda=False))
        x = np.ascontiguousarray(batch, dtype=np.float32)
        self.binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x))
        if self.out_rest is not None:
            out = self._output(np, len(x))
            self.binding.bind_ortvalue_output(self.output_name, ort.OrtValue.ortvalue_from_numpy(out))
            self.session.run_with_iobinding(self.binding)
        else:
            self.binding.bind_output(self.output_name, "cpu")
            self.session.run_with_iobinding(self.binding)
            out = self.binding.copy_outputs_to_cpu()[0]
        return _per_sample_any(out, len(x), tuple(x.shape))


def _per_sample_any(out: Any, n: int, in_shape: tuple[int, ...]) -> Any:
    """``_per_sample`` for NumPy or CuPy outputs (no copy off the device)."""
    if out.ndim == 0 or out.shape[0] != n:
        raise ModelError(
            f"the model returned outputs of shape {list(out.shape)} for {n} inputs of shape {list(in_shape)}; "
            "l0tre needs one row of class scores per input"
        )
    return out.reshape(n, -1)


def _per_sample(out: np.ndarray, n: int, in_shape: tuple[int, ...]) -> np.ndarray:
    """``out`` as ``[n, K]``, or a ModelError when the model did not return one row per input."""
    if out.ndim == 0 or out.shape[0] != n:
        raise ModelError(
            f"the model returned outputs of shape {list(out.shape)} for {n} inputs of shape {list(in_shape)}; "
            "l0tre needs one row of class scores per input"
        )
    return out.reshape(n, -1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _pick(values: list[Any], wanted: str | None, what: str) -> Any:
    param = f"{what}_name"
    if wanted is not None:
        for v in values:
            if v.name == wanted:
                return v
        names = ", ".join(v.name for v in values)
        raise UsageError(f"the model has no {what} named {wanted!r} (it has: {names})", field=param)
    if len(values) != 1:
        names = ", ".join(v.name for v in values)
        raise ModelError(f"the model has {len(values)} {what}s ({names}); choose one with `{param}`", field=param)
    return values[0]


def _session(ort: Any, model_bytes: bytes, providers: list[Any], threads: int) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # fatal only: errors reach the user as our one-line ModelError
    so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model_bytes, sess_options=so, providers=providers)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {msg}") from None


def load_runtime(path: Path, options: BackendOptions) -> OrtRuntime:
    check_single_ort_install()
    import onnxruntime as ort

    model = read_model(path)
    inp = _pick(graph_inputs(model), options.input_name, "input")
    outp = _pick(list(model.graph.output), options.output_name, "output")
    elem = inp.type.tensor_type.elem_type
    if elem != 1:  # FLOAT
        raise ModelError(f"the input {inp.name!r} is not float32 (ONNX element type {elem}); l0tre feeds float32 images")
    in_shape = declared_shape(inp)
    out_shape = declared_shape(outp)
    if not in_shape:
        raise ModelError(f"the input {inp.name!r} has no declared shape; export the model with input shapes")
    providers = _providers(options.device, ort.get_available_providers())
    metadata = {p.key: p.value for p in model.metadata_props}
    notes: list[str] = []
    batching = "native"
    session = None
    fixed_batch = isinstance(in_shape[0], int)
    if fixed_batch and in_shape[0] != 1:
        raise ModelError(f"the input {inp.name!r} has a fixed batch of {in_shape[0]}; export it with batch 1 or a dynamic batch")
    if fixed_batch:
        rewritten = make_batch_symbolic(model, inp.name, outp.name)
        try:
            candidate = _session(ort, rewritten.SerializeToString(), providers, options.threads)
            if _same_as_single_runs(candidate, _session(ort, model.SerializeToString(), providers, options.threads), inp.name, outp.name, in_shape):
                session, batching = candidate, "rewritten"
                notes.append("the model's fixed batch of 1 was made symbolic (checked against single runs)")
        except ModelError:
            session = None
        if session is None:
            batching = "loop"
            notes.append("the model's fixed batch of 1 could not be made symbolic; inputs run one at a time (slow)")
            warnings.warn(notes[-1], stacklevel=2)
    if session is None:
        session = _session(ort, model.SerializeToString(), providers, options.threads)
    used = list(session.get_providers())
    wanted_cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers)
    if wanted_cuda and "CUDAExecutionProvider" not in used:
        if options.device == "cuda":
            raise EnvironmentProblem(
                "the CUDA provider failed to start (CUDA or cuDNN libraries missing?)",
                hint="check `python -c 'import onnxruntime; onnxruntime.preload_dlls()'`, or use `device` cpu",
                field="device",
            )
        notes.append("the CUDA provider failed to start; running on the CPU")
    return OrtRuntime(
        session=session,
        input_name=inp.name,
        input_shape=in_shape,
        output_name=outp.name,
        output_shape=out_shape,
        providers=used,
        batching=batching,
        onnx_model=model,
        metadata=metadata,
        notes=notes,
        session_options=_options_of(session),
    )


def _options_of(session: Any) -> dict[str, Any]:
    so = session.get_session_options()
    return {
        "graph_optimization_level": str(so.graph_optimization_level).rsplit(".", 1)[-1],
        "execution_mode": str(so.execution_mode).rsplit(".", 1)[-1],
        "intra_op_num_threads": so.intra_op_num_threads,
    }


def _same_as_single_runs(batched: Any, single: Any, in_name: str, out_name: str, in_shape: tuple[Any, ...]) -> bool:
    rng = np.random.default_rng(0)
    x = rng.random((CHECK_BATCH, *in_shape[1:]), dtype=np.float32)
    try:
        got = batched.run([out_name], {in_name: x})[0]
        want = np.concatenate([single.run([out_name], {in_name: x[i : i + 1]})[0] for i in range(CHECK_BATCH)])
    except Exception:
        return False
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))
