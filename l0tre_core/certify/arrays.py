"""Where boxes are bounded: NumPy on the host, CuPy on a GPU.

``boxes.box_bounds`` (the forward pass, the backward pass on the margins, and the operators they
call) is written once, against NumPy.
Its functions take the array module from their operands: NumPy's functions dispatch to CuPy for
CuPy arrays (NEP 18, ``__array_function__``/``__array_ufunc__``), and the few calls that create
arrays from nothing take ``xp`` (``ArrayBackend.xp``). The network's constants (matrices, biases,
the clean box's rows) stay host arrays where they are built; ``ArrayBackend.put`` gives their
device copy, made once per host array and dropped with it. Results come back with ``get``.

``STRICT`` is a device made of host memory for the tests: its arrays refuse to mix with host
arrays, as CuPy's do, so a constant that was not put on the device fails on any machine, not only
on a GPU.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import numpy as np


def module_of(a: Any) -> Any:
    """The array module of ``a`` (CuPy is never imported here: if it is not loaded, ``a`` is not
    one of its arrays)."""
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(a, cupy.ndarray):
        return cupy
    if isinstance(a, StrictArray):
        return STRICT.xp
    return np


def backend_of(a: Any) -> "ArrayBackend":
    """The backend whose arrays ``a`` is one of."""
    m = module_of(a)
    if m is np:
        return NUMPY
    if isinstance(a, StrictArray):
        return STRICT
    backend = cupy_backend()
    assert backend is not None
    return backend


class ArrayBackend:
    """An array module and the copies between it and the host."""

    name = "numpy"
    chunk_scale = 1  # batches of boxes this many times the host's (``search.BOX_CHUNK_FLOATS``)

    def __init__(self) -> None:
        self.xp: Any = np
        self._kept: dict[int, tuple[weakref.ref, Any]] = {}

    @property
    def on_host(self) -> bool:
        return self.xp is np

    def asarray(self, a: Any) -> Any:
        """A transient host array on the device (not kept)."""
        return a

    def put(self, a: Any) -> Any:
        """The device copy of the host array ``a``, kept while ``a`` lives (network constants,
        the clean box's rows). Device arrays and None pass through."""
        if self.on_host or type(a) is not np.ndarray:  # None, or already on the device
            return a
        key = id(a)
        hit = self._kept.get(key)
        if hit is not None and hit[0]() is a:
            return hit[1]
        dev = self.asarray(a)
        self._kept[key] = (weakref.ref(a, lambda _r, k=key: self._kept.pop(k, None)), dev)
        return dev

    def get(self, a: Any) -> Any:
        """``a`` on the host (NumPy)."""
        return a


NUMPY = ArrayBackend()


class CupyBackend(ArrayBackend):
    name = "cupy"

    def __init__(self) -> None:
        super().__init__()
        import cupy

        self.xp = cupy
        # a call costs the GPU about the same for 20 boxes as for 300 (kernel launches and
        # copies): batches as many times the host's as 24 arrays of their rows (the rows, their
        # copies and temporaries) fit in the free memory, at most 16
        free = cupy.cuda.Device().mem_info[0]
        self.chunk_scale = int(max(1, min(16, free // (24 * 8 * _box_chunk_floats()))))

    def asarray(self, a: Any) -> Any:
        return self.xp.asarray(a)

    def get(self, a: Any) -> Any:
        return self.xp.asnumpy(a) if isinstance(a, self.xp.ndarray) else a


def _box_chunk_floats() -> int:
    from l0tre_core.certify.search import BOX_CHUNK_FLOATS  # it imports this module

    return BOX_CHUNK_FLOATS


_CUPY: CupyBackend | None = None


def cupy_backend() -> CupyBackend | None:
    """The CuPy backend where CuPy sees a usable GPU, else None (imports CuPy on first call)."""
    global _CUPY
    if _CUPY is None:
        try:
            import cupy

            if not cupy.is_available():
                return None
        except Exception:  # not installed, or installed without a driver
            return None
        _CUPY = CupyBackend()
    return _CUPY


# ------------------------------------------------------------------------------------------------
# a strict device in host memory, for the tests


class StrictArray(np.ndarray):
    """A host array playing a device array: any operation mixing it with a plain host array (more
    than a scalar) raises TypeError, as CuPy does; results stay StrictArray."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _check(inputs, ufunc.__name__)
        out = kwargs.get("out")
        if out is not None:
            _check(out, ufunc.__name__)
            kwargs["out"] = tuple(np.asarray(o).view(np.ndarray) for o in out)
        res = getattr(ufunc, method)(*(_plain(x) for x in inputs), **kwargs)
        return _wrap(res)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        _check(_flatten(args) + _flatten(list(kwargs.values())), func.__name__)
        res = func(*_unwrap(args), **_unwrap(kwargs))
        return _wrap(res)

    def __getitem__(self, idx: Any) -> Any:
        return _wrap(self.view(np.ndarray)[_unwrap(idx)])

    def __setitem__(self, idx: Any, value: Any) -> None:
        _check([value], "setitem")
        self.view(np.ndarray)[_unwrap(idx)] = _plain(value)


def _flatten(xs: Any) -> list[Any]:
    out: list[Any] = []
    for x in xs if isinstance(xs, (list, tuple)) else [xs]:
        if isinstance(x, (list, tuple)):
            out += _flatten(x)
        else:
            out.append(x)
    return out


def _check(xs: Any, what: str) -> None:
    for x in _flatten(list(xs) if isinstance(xs, (list, tuple)) else [xs]):
        if type(x) is np.ndarray and x.ndim > 0:
            raise TypeError(f"{what}: a host array mixed with device arrays")


def _plain(x: Any) -> Any:
    return x.view(np.ndarray) if isinstance(x, StrictArray) else x


def _unwrap(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_unwrap(v) for v in x)
    if isinstance(x, list):
        return [_unwrap(v) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return _plain(x)


def _wrap(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    if type(x) is np.ndarray:
        return x.view(StrictArray)
    return x


class _StrictModule:
    """NumPy whose array-creating functions return StrictArray (the rest dispatch on operands)."""

    ndarray = StrictArray

    def __getattr__(self, name: str) -> Any:
        f = getattr(np, name)
        if callable(f) and name in _CREATORS:
            return lambda *a, **k: _wrap(f(*a, **k))
        return f


# the functions the certifier calls through ``xp`` to make arrays (the rest dispatch on their
# operands, so a host operand among them still fails)
_CREATORS = {"zeros", "ones", "empty", "full", "arange", "asarray", "ascontiguousarray"}


class StrictBackend(ArrayBackend):
    name = "strict"

    def __init__(self) -> None:
        super().__init__()
        self.xp = _StrictModule()

    @property
    def on_host(self) -> bool:
        return False

    def asarray(self, a: Any) -> Any:
        return np.array(a).view(StrictArray)

    def get(self, a: Any) -> Any:
        return np.array(a.view(np.ndarray)) if isinstance(a, StrictArray) else a


STRICT = StrictBackend()


def add_at(a: Any, idx: Any, v: Any) -> None:
    """``np.add.at(a, idx, v)`` on any backend (repeated indices add up)."""
    if isinstance(a, StrictArray):
        _add_at_host(a.view(np.ndarray), _unwrap(idx), _plain(v))
    elif module_of(a) is np:
        _add_at_host(a, idx, v)
    else:
        import cupyx

        cupyx.scatter_add(a, idx, v)


def _add_at_host(a: np.ndarray, idx: Any, v: Any) -> None:
    if a.dtype == np.float64 and isinstance(idx, tuple) and len(idx) == a.ndim:
        # one index per axis: a weighted bincount of the flat positions (several times np.add.at's
        # speed on the stem's scatters; it sums in another order, within float64 rounding)
        at = np.broadcast_arrays(*idx, v)
        flat = np.ravel_multi_index(at[:-1], a.shape, mode="wrap").reshape(-1)  # (negative: from the end)
        a += np.bincount(flat, weights=at[-1].reshape(-1), minlength=a.size).reshape(a.shape)
    else:
        np.add.at(a, idx, v)
