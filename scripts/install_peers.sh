#!/usr/bin/env bash
# Install the L0 attack peers for benchmarks/peers.py into their own virtualenv (never an l0tre
# dependency). The order matters next to CPU-only PyTorch: see ../shared/research/peers-install.md.
#
#   scripts/install_peers.sh [VENV]        (default /work/venv-peers)
#
# Then: VENV/bin/python benchmarks/peers.py ...
set -euo pipefail
VENV="${1:-/work/venv-peers}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade "pip" "setuptools<81" wheel
# 1. CPU torch first (it comes from local disk); everything after must not replace it.
"$PIP" install -q "torch==2.13.0"
# 2. The peers without their declared dependencies: adv-lib and onnx2torch would pull a newer torch
#    and a CUDA torchvision whose compiled part cannot load next to CPU torch.
"$PIP" install -q --no-deps adv-lib foolbox torchattacks onnx2torch adversarial-robustness-toolbox
# 3. What they really import. visdom (adv-lib imports it) builds from source with old setuptools.
"$PIP" install -q onnx onnxruntime tqdm scipy eagerpy GitPython typing-extensions requests scikit-learn numba
"$PIP" install -q --no-build-isolation visdom || echo "visdom did not build: benchmarks/peers.py stubs it" >&2
# 4. l0tre itself, to recount and re-run every peer's example with our own code.
"$PIP" install -q -e "$HERE"
# 5. Put torch 2.13.0 back in case anything above replaced it.
"$PIP" install -q "torch==2.13.0"
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "adv_lib", "foolbox", "torchattacks", "art", "onnxruntime", "l0tre_core"):
    try:
        m = importlib.import_module(name) if name != "adv_lib" else None
        print(f"{name}: ok {getattr(m, '__version__', '')}")
    except Exception as exc:  # report, do not fail: peers.py skips what does not import
        print(f"{name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
PY
