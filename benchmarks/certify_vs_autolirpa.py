"""Our one-pass L0 bound vs auto_LiRPA's CROWN with PerturbationL0Norm, on the same MNIST inputs.

Model: tests/data/models/mlp_b1.onnx (784-100-100-10 ReLU MLP, input [1, 784] in [0, 1], logits).
Inputs: held-out t10k images 8000 .. 8000+N-1 (default N = 50). Reference label: the prediction.
Set: at most t pixels changed, each to any value in [0, 1]. Certified iff every lower bound of
z_ref - z_k (k != ref) is > 0.

Two interpreters, one file:

    # our side (project venv: numpy, onnx, l0tre_core)
    .venv/bin/python benchmarks/certify_vs_autolirpa.py --side ours  --out /tmp/l0_ours.json
    # auto_LiRPA side (a torch venv with auto_LiRPA installed, e.g. /work/torchenv)
    /work/torchenv/bin/python benchmarks/certify_vs_autolirpa.py --side lirpa --out /tmp/l0_lirpa.json
    # table from both JSON files (any interpreter with numpy)
    .venv/bin/python benchmarks/certify_vs_autolirpa.py --side table --ours /tmp/l0_ours.json --lirpa /tmp/l0_lirpa.json

auto_LiRPA side: PerturbationL0Norm(eps=t, x_L=0, x_U=1, ratio=1.0) (ratio != 1 is unsound).
Two variants are reported:
  - "default": auto_LiRPA's CROWN as shipped; it bounds the first Linear layer by its interval
    (IBP) rule, centre +- sum of the t largest |w| (check_IBP_first_linear);
  - "bwd-first": the same CROWN with that shortcut disabled, so the first layer's bounds also come
    from the backward linear bound concretised by the top-t rule (pixel-value-aware: w*x or w*(1-x)).
method="backward" is the same code path as "CROWN" in auto_LiRPA 0.3; both are run and compared.

auto_LiRPA 0.3 (the PyPI release) predates numpy 2 and torch >= 2.x internals; the small
compatibility shims in _lirpa_shims() patch only names it imports (numpy.lib.arraysetops.isin,
torch.onnx.utils._optimize_graph, torch.onnx.symbolic_helper._set_opset_version,
torch._C.Node.__getitem__) at run time, without touching the installed files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests/data/models/mlp_b1.onnx"
MNIST = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")
TS = (2, 3, 4, 5)


def images(n: int, start: int = 8000) -> np.ndarray:
    with gzip.open(MNIST) as f:
        raw = f.read()
    imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784)
    return imgs[start : start + n].astype(np.float64) / 255.0


# ---------------------------------------------------------------------------------------------- ours
def run_ours(n: int) -> dict:
    import onnx

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from certify_mnist import input_set  # the same InputSet construction as certify_mnist.py

    from l0tre_core.certify import Network, margin_lower_bounds

    model = onnx.load(str(MODEL))
    net = Network.from_onnx(model, model.graph.input[0].name, model.graph.output[0].name, (784,))
    res = {"refs": [], "lb": {str(t): [] for t in TS}, "seconds": []}
    for img in images(n):
        inp = input_set(img.reshape(28, 28), None)
        ref = int(np.argmax(net.forward(inp.x0[None])[0]))
        res["refs"].append(ref)
        t0 = time.perf_counter()
        for t in TS:
            lb = margin_lower_bounds(net, inp, ref, t)
            res["lb"][str(t)].append(float(np.delete(lb, ref).min()))
        res["seconds"].append(time.perf_counter() - t0)
    return res


# --------------------------------------------------------------------------------------------- lirpa
def _lirpa_shims() -> None:
    import types

    if "numpy.lib.arraysetops" not in sys.modules:
        try:
            import numpy.lib.arraysetops  # noqa: F401
        except ImportError:
            m = types.ModuleType("numpy.lib.arraysetops")
            m.isin = np.isin
            sys.modules["numpy.lib.arraysetops"] = m
    import torch
    import torch.onnx.symbolic_helper
    import torch.onnx.utils

    if not hasattr(torch.onnx.utils, "_optimize_graph"):
        from torch.onnx._internal.torchscript_exporter import utils as tsu

        torch.onnx.utils._optimize_graph = tsu._optimize_graph
    if not hasattr(torch.onnx.symbolic_helper, "_set_opset_version"):
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

        def _set_opset_version(v):
            GLOBALS.export_onnx_opset_version = v

        torch.onnx.symbolic_helper._set_opset_version = _set_opset_version
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)


def torch_mlp(dtype):
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(MODEL))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            assert a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0 and a.get("transA", 0) == 0
            w, b = init[node.input[1]], init[node.input[2]]
            if not a.get("transB", 0):
                w = w.T
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data = torch.tensor(w, dtype=dtype)
            lin.bias.data = torch.tensor(b, dtype=dtype)
            layers.append(lin)
        elif node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
        else:
            raise ValueError(node.op_type)
    return torch.nn.Sequential(*layers).to(dtype)


def run_lirpa(n: int, dtype_name: str) -> dict:
    _lirpa_shims()
    import onnxruntime as ort
    import torch
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationL0Norm

    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    net = torch_mlp(dtype).eval()
    xs = images(n)
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    z_ort = np.concatenate([sess.run(None, {"x": x[None].astype(np.float32)})[0] for x in xs])
    with torch.no_grad():
        z_t = net(torch.tensor(xs, dtype=dtype)).numpy()
    max_diff = float(np.abs(z_ort - z_t).max())
    assert max_diff < 1e-4, max_diff

    variants = {"default": None, "bwd-first": False}
    res = {"torch_vs_ort_max_abs_diff": max_diff, "dtype": dtype_name, "refs": [],
           "lb": {f"{v}/{m}": {str(t): [] for t in TS} for v in variants for m in ("CROWN", "backward")},
           "seconds": {v: [] for v in variants}}
    import auto_LiRPA.bound_general as bg

    orig_first = bg.BoundedModule.check_IBP_first_linear
    bm = BoundedModule(net, (torch.zeros(1, 784, dtype=dtype),))
    for x in xs:
        xt = torch.tensor(x[None], dtype=dtype)
        with torch.no_grad():
            ref = int(net(xt).argmax())
        res["refs"].append(ref)
        others = [k for k in range(10) if k != ref]
        C = torch.zeros(1, 9, 10, dtype=dtype)
        for i, k in enumerate(others):
            C[0, i, ref], C[0, i, k] = 1.0, -1.0
        for vname, patch in variants.items():
            bg.BoundedModule.check_IBP_first_linear = orig_first if patch is None else (lambda self, node: False)
            t0 = time.perf_counter()
            for t in TS:
                ptb = PerturbationL0Norm(eps=t, x_L=torch.zeros_like(xt), x_U=torch.ones_like(xt), ratio=1.0)
                bt = BoundedTensor(xt, ptb)
                for m in ("CROWN", "backward"):
                    lb, _ = bm.compute_bounds(x=(bt,), C=C, method=m, bound_upper=False)
                    res["lb"][f"{vname}/{m}"][str(t)].append(float(lb.min()))
            res["seconds"][vname].append((time.perf_counter() - t0) / 2)  # two methods per t
    bg.BoundedModule.check_IBP_first_linear = orig_first
    return res


# --------------------------------------------------------------------------------------------- table
def table(ours: dict, lirpa: dict) -> str:
    n = len(ours["refs"])
    ref_mismatch = [i for i in range(n) if ours["refs"][i] != lirpa["refs"][i]]
    lines = []
    for v in ("default", "bwd-first"):
        a, b = lirpa["lb"][f"{v}/CROWN"], lirpa["lb"][f"{v}/backward"]
        same = all(np.allclose(a[str(t)], b[str(t)], rtol=0, atol=1e-9) for t in TS)
        lines.append(f"- auto_LiRPA {v}: method='backward' gives the same bounds as 'CROWN': {same}")
    rows = ["| t | ours one-pass % | auto_LiRPA CROWN default % | auto_LiRPA CROWN bwd-first % | "
            "LiRPA certifies, ours not (default / bwd-first) |", "|---|---|---|---|---|"]
    for t in TS:
        o = np.array(ours["lb"][str(t)]) > 0
        d = np.array(lirpa["lb"][f"default/CROWN"][str(t)]) > 0
        f = np.array(lirpa["lb"][f"bwd-first/CROWN"][str(t)]) > 0
        miss_d = [8000 + i for i in np.flatnonzero(d & ~o)]
        miss_f = [8000 + i for i in np.flatnonzero(f & ~o)]
        rows.append(f"| {t} | {100 * o.mean():.0f} | {100 * d.mean():.0f} | {100 * f.mean():.0f} | "
                    f"{len(miss_d)} {miss_d if miss_d else ''} / {len(miss_f)} {miss_f if miss_f else ''} |")
    secs = (f"- seconds per input for all four t: ours {np.mean(ours['seconds']):.4f} (NumPy float64), "
            f"auto_LiRPA default {np.mean(lirpa['seconds']['default']):.4f}, "
            f"bwd-first {np.mean(lirpa['seconds']['bwd-first']):.4f} (torch {lirpa['dtype']}, CPU)")
    extra = [f"- reference labels differ between the two sides on: {ref_mismatch or 'none'}",
             f"- torch rebuild vs onnxruntime logits, max |diff|: {lirpa['torch_vs_ort_max_abs_diff']:.2e}"]
    return "\n".join(rows + [""] + lines + [secs] + extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["ours", "lirpa", "table"], required=True)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--out", default=None)
    ap.add_argument("--ours", default="/tmp/l0_ours.json")
    ap.add_argument("--lirpa", default="/tmp/l0_lirpa.json")
    ap.add_argument("--dtype", default="float64", help="torch dtype for the auto_LiRPA side")
    args = ap.parse_args()
    if args.side == "table":
        print(table(json.loads(Path(args.ours).read_text()), json.loads(Path(args.lirpa).read_text())))
        return
    res = run_ours(args.n) if args.side == "ours" else run_lirpa(args.n, args.dtype)
    out = Path(args.out or (args.ours if args.side == "ours" else args.lirpa))
    out.write_text(json.dumps(res))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
