"""What plugins register, as contracts the engine relies on and checks at registration.

Four ``register_*`` hooks (``l0tre_core/hookspecs.py``) fill four registries, each keyed by the
object's unique ``name``:

- ``data_formats``: ``DataFormat`` readers of data-set files;
- ``backends``: ``InferenceBackend`` objects that load a model file into a ``Runtime``;
- ``array_kernels``: ``ArrayKernels`` that build perturbation tensors on one kind of device;
- ``bound_methods``: ``LowerBoundMethod`` certifiers (selected with ``--lower NAME``; their
  ``prepare`` returns a per-run ``Certifier``) and ``UpperBoundMethod`` searches (``--upper NAME``).

The engine calls nothing these contracts do not declare. ``check(kind, obj)`` runs when an object
is registered and names what is missing (``l0tre plugins`` builds every registry, so it checks
every installed object).

What a bound method is handed:

- ``ctx``, a ``SearchContext`` (one input): ``ctx.x_units [U, C]`` (the clean input, one row per
  unit), ``ctx.ref``, ``ctx.values`` (V, ``[|V|, C]``), ``ctx.encoder.n_units``/``channels``,
  ``ctx.chunk`` (evaluations per model call group), ``ctx.run_changes(units, values)`` (outputs
  of many changed copies at once), ``ctx.level(t, deadline)`` (L0-TRE's step at level t: the
  sweep over V, its verified flip, ``.union()``), ``ctx.verify(witness)``, ``ctx.tighten(witness)``;
- ``state``, a ``SampleState``: ``lower``, ``upper``, ``witness``, ``settled``;
- witnesses are ``Witness(units, values)``; build them with ``Witness.between(ctx.x_units, adv)``
  so that a unit set to its own clean value is not counted (the engine recounts every witness
  that way and verifies it in the model before keeping it).

Levels are asked in order t = 1, 2, ... and a level is asked only when every smaller one was
proven, so ``proven`` at level t means "no change of at most t units flips the label".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, runtime_checkable

import numpy as np

from l0tre_core.errors import PluginError

# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawData:
    """What a data format reads: samples as stored and their labels (None when unlabelled).

    ``layout`` is ``"hwc"`` when each sample is an image in height, width, channel order (or
    height, width for grey images), or ``"as-is"`` when samples should be matched against the
    model's own input shape.
    """

    x: np.ndarray
    y: np.ndarray | None
    layout: str


@runtime_checkable
class DataFormat(Protocol):
    name: str
    description: str

    def matches(self, path: Path) -> bool:
        """Whether this format claims ``path`` (by suffix, by content, or by being a folder)."""

    def load(self, path: Path, labels: Path | None) -> RawData:
        """Read the whole file; raise ``DataError`` with a one-line reason when it cannot."""


# --- inference ------------------------------------------------------------------------------------


@runtime_checkable
class Runtime(Protocol):
    """A loaded model that runs batches in the model's own input space and layout."""

    input_name: str
    input_shape: tuple[Any, ...]
    output_name: str
    output_shape: tuple[Any, ...]
    providers: list[str]
    batching: str  # how batches run: "native", "rewritten" (batch made symbolic) or "loop"
    notes: list[str]  # what the backend had to do, for the user (fallbacks, rewrites)
    onnx_model: Any  # the ONNX graph (onnx.ModelProto) bound propagation reads, or None
    metadata: Mapping[str, str]  # the model's metadata entries (``l0tre.*`` card fields among them)
    session_options: Mapping[str, Any]  # recorded with results: certificates assume them

    def run(self, batch: Any) -> np.ndarray:
        """Outputs ``[N, K]`` as float32 NumPy for a float32 batch (NumPy or device array)."""


@dataclass(frozen=True)
class BackendOptions:
    device: str = "auto"  # auto | cpu | cuda
    input_name: str | None = None
    output_name: str | None = None
    threads: int = 0


@runtime_checkable
class InferenceBackend(Protocol):
    name: str

    def load(self, path: Path, options: BackendOptions) -> Runtime:
        """Load and check the model; raise ``ModelError`` or ``EnvironmentProblem``."""


@runtime_checkable
class ArrayKernels(Protocol):
    """Builds perturbation tensors on one kind of device.

    Optional: ``device_outputs = True`` with a ``reduce(outputs, ref, kind, probs)`` method (as
    ``l0tre_cupy.CupyKernels``) asks the search to leave model outputs on the device, through a
    runtime's optional ``run_bound(batch)`` (IOBinding), and to reduce them there to host
    ``(scores, flipped)`` arrays of one entry per row."""

    name: str

    def usable(self) -> bool:
        """Whether this device can be used here (a GPU present, its library importable)."""

    def asarray(self, x: np.ndarray) -> Any:
        """``x`` on the kernel's device."""

    def perturb(self, base: Any, positions: Any, values: Any, out: Any = None, dirty: Any = None) -> Any:
        """``out[b] = base`` then ``out[b, positions[b, j]] = values[b, j]``.

        ``base`` is a flat model-space input ``[D]``; ``positions`` and ``values`` are ``[B, M]``
        (M = changed units x channels). Returns ``[B, D]`` float32 on the kernel's device. When
        ``out`` is the buffer of the previous call and ``dirty`` the positions that call wrote, only
        those need restoring.
        """


# --- bounds ---------------------------------------------------------------------------------------

Status = Literal["proven", "refuted", "unknown", "band", "timeout"]


@dataclass
class Certificate:
    """What a lower-bound method says about one input and one level t.

    - ``proven``: every change of at most t units keeps the reference label (the lower bound
      becomes t + 1, with the method's guarantee);
    - ``refuted``: ``witness`` changes at most t units and flips the label (the engine verifies
      it before use);
    - ``unknown``: neither; ``band`` when the reason is the float32 error band (sound methods);
    - ``timeout``: the level's work was cut short by the deadline (the level is not finished).
    """

    status: Status
    witness: Any = None  # a Witness, for refuted
    detail: str = ""


@runtime_checkable
class Certifier(Protocol):
    """A lower-bound method prepared for one run (the model and the data)."""

    def refusal(self) -> str | None:
        """Why this run cannot be certified after all (None: it can)."""

    def certify(self, ctx: Any, t: int, deadline: float | None) -> Certificate:
        """Decide level ``t`` for the input ``ctx`` (a ``SearchContext``) before ``deadline``
        (a ``time.monotonic()`` value, or None)."""


@runtime_checkable
class LowerBoundMethod(Protocol):
    name: str
    kind: str  # "lower"
    guarantee: str  # "sound" or "discrete": what its proven levels carry
    description: str

    def unsupported(self, classifier: Any) -> str | None:
        """A one-line reason this method cannot run on ``classifier`` at all, or None."""

    def prepare(self, classifier: Any, x: np.ndarray, threat: Any, seed: int) -> Certifier:
        """Per-run state for ``classifier`` on the canonical inputs ``x [N, P, C]``."""


@runtime_checkable
class UpperBoundMethod(Protocol):
    name: str
    kind: str  # "upper"
    description: str

    def improve(self, ctx: Any, state: Any, t: int, deadline: float | None, rng: np.random.Generator) -> Any:
        """A witness smaller than ``state.upper`` found at level ``t``, or None. The engine
        verifies it in the model before keeping it."""


# --- checks at registration -----------------------------------------------------------------------

CONTRACTS: dict[str, tuple[type, ...]] = {
    "data_formats": (DataFormat,),
    "backends": (InferenceBackend,),
    "array_kernels": (ArrayKernels,),
    "bound_methods": (LowerBoundMethod, UpperBoundMethod),
}
COMBINATORS = ("auto", "both", "none")  # selection words no method may take as its name


def check(kind: str, obj: Any, plugin: str) -> None:
    """Refuse an object that does not meet its registry's contract, naming what is missing."""
    options = CONTRACTS[kind]
    if kind == "bound_methods":
        k = getattr(obj, "kind", None)
        options = {"lower": (LowerBoundMethod,), "upper": (UpperBoundMethod,)}.get(k, ())
        if not options:
            raise PluginError(f"plugin {plugin!r} registered bound method {getattr(obj, 'name', obj)!r} "
                              f"with kind {k!r}; it must be 'lower' or 'upper'")
        if getattr(obj, "name", None) in COMBINATORS:
            raise PluginError(f"plugin {plugin!r} registered a bound method named {obj.name!r}, a word reserved for "
                              f"combining methods ({', '.join(COMBINATORS)})")
        if k == "lower" and getattr(obj, "guarantee", None) not in ("sound", "discrete"):
            raise PluginError(f"plugin {plugin!r}: lower-bound method {obj.name!r} must declare guarantee 'sound' or 'discrete'")
    contract = options[0]
    missing = [m for m in _members(contract) if not hasattr(obj, m)]
    if missing:
        raise PluginError(f"plugin {plugin!r} registered {kind[:-1].replace('_', ' ')} {getattr(obj, 'name', obj)!r} "
                          f"without {', '.join(missing)} ({contract.__name__} in l0tre_core.contracts)")


def _members(contract: type) -> list[str]:
    names = set(getattr(contract, "__annotations__", {}))
    names |= {n for n, v in vars(contract).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


__all__ = [
    "ArrayKernels", "BackendOptions", "Certificate", "Certifier", "DataFormat", "InferenceBackend",
    "LowerBoundMethod", "RawData", "Runtime", "UpperBoundMethod", "check",
]
