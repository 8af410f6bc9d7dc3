"""What the applications compute on the embedded demo with fixed seeds, as one JSON-able digest.

``tests/test_behaviour_recorded.py`` compares a fresh digest with ``tests/data/recorded/demo.json``;
a refactor must leave it unchanged. An issue that changes results on purpose re-records it
(``python tests/behaviour.py --record``) and says so in its note.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RECORDED = Path(__file__).parent / "data" / "recorded" / "demo.json"

RUNS = {
    "robustness": ["robustness", "--n", "4", "--max-t", "1", "--seed", "0", "--format", "json", "-q"],
    "attack": ["attack", "--n", "4", "--seed", "0", "--format", "json", "-q"],
    "saliency": ["saliency", "--n", "1", "--format", "json", "-q"],
    "testgen": ["testgen", "--n", "2", "--format", "json", "-q"],
}


def _digest(arrays: Any) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays.files):
        a = np.asarray(arrays[name])
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.round(a.astype(np.float64), 5) if a.dtype.kind == "f" else a).tobytes())
    return h.hexdigest()


def digest() -> dict[str, Any]:
    from helpers import invoke

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in RUNS.items():
            folder = Path(tmp) / name
            res = invoke([*args, "--out", folder])
            assert res.exit_code == 0, (name, res.stderr)
            report = json.loads(res.stdout)
            if name == "robustness":
                out[name] = [{k: s[k] for k in ("index", "reference", "lower_sound", "lower_discrete", "upper")}
                             for s in report["samples"]]
                out[name + "_witnesses"] = _digest(np.load(folder / "witnesses.npz"))
            elif name == "attack":
                out[name] = [{k: s[k] for k in ("index", "reference", "l0", "success", "witness")} for s in report["samples"]]
            elif name == "saliency":
                out[name] = _digest(np.load(folder / "saliency.npz"))
            else:
                out[name] = _digest(np.load(folder / "tests.npz"))
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if "--record" in sys.argv:
        RECORDED.parent.mkdir(parents=True, exist_ok=True)
        RECORDED.write_text(json.dumps(digest(), indent=1) + "\n")
        print(f"recorded {RECORDED}")
    else:
        print(json.dumps(digest(), indent=1))
