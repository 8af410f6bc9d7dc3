"""Saliency at ImageNet size against raw onnxruntime, side by side in one run.

For a 224x224x3 model (``scripts/mobilenet.py`` writes them), runs L0-TRE's single-pixel sweep with
the 8 corner colours on ``--pixels`` pixels of one input per round (the saliency plugin's own path:
``single_pixel_scores``, with the chunk and model batch ``--memory-mb`` gives; one search context,
warmed with one chunk first, as within one image) and, in alternating rounds, plain
``session.run`` on already-built batches of the same size, on the same session. Prints evaluations/s of
both, their ratio, the seconds one full image (401,408 evaluations) would take at the measured
rate, and the peak resident memory.

    python benchmarks/saliency_224.py MODEL.onnx DATA.npz [--pixels 512] [--rounds 2] [--memory-mb 1024]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from l0tre_core import SearchContext, ThreatModel, load_data, load_model, pick_kernels
from l0tre_saliency.command import memory_plan, peak_rss_mb
from l0tre_saliency.saliency import single_pixel_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--pixels", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=1024)
    args = ap.parse_args()
    clf = load_model(args.model)
    threat = ThreatModel(lo=clf.card.lo, hi=clf.card.hi)
    plan = memory_plan(clf, threat, args.memory_mb, None)
    clf.batch_size = plan["model_batch"]
    data = load_data(args.data, clf.geometry, clf.card.range, n=1)
    x = data.x[0]
    ref = int(clf.predict(data.x)[0])
    from l0tre_core.host import create_host

    kernels = pick_kernels(create_host(), "cpu")
    pixels = np.arange(args.pixels)
    nv = plan["values_per_pixel"]
    per_round = args.pixels * nv
    xs = np.repeat(x[None], plan["model_batch"], axis=0)
    ready = np.ascontiguousarray(clf.model_input(xs))
    sizes = [plan["model_batch"]] * (per_round // plan["model_batch"]) + ([per_round % plan["model_batch"]] if per_round % plan["model_batch"] else [])
    l0tre_s, raw_s = 0.0, 0.0
    ctx = SearchContext(clf, kernels, threat, x, ref, plan["chunk"])
    warm = plan["chunk"] // nv
    single_pixel_scores(ctx, np.arange(warm))  # allocates the chunk buffer once, as the first chunk of an image does
    for r in range(args.rounds):
        block = pixels + warm + r * args.pixels
        t0 = time.perf_counter()
        single_pixel_scores(ctx, block)
        l0tre_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for size in sizes:
            clf.runtime.run(ready[:size])
        raw_s += time.perf_counter() - t0
    evals = per_round * args.rounds
    l0tre_rate, raw_rate = evals / l0tre_s, evals / raw_s
    full = clf.geometry.n_pixels * nv
    print(json.dumps({
        "model": args.model, "input": [*clf.geometry.image_shape, clf.geometry.n_channels], "values_per_pixel": nv,
        "evaluations_per_image": full, "evaluations_measured": evals, "plan": plan,
        "l0tre_evals_per_s": round(l0tre_rate, 1), "raw_onnxruntime_evals_per_s": round(raw_rate, 1),
        "ratio_l0tre_to_raw": round(l0tre_rate / raw_rate, 3),
        "seconds_per_image_at_l0tre_rate": round(full / l0tre_rate, 1), "peak_rss_mb": peak_rss_mb(),
    }, indent=1))


if __name__ == "__main__":
    main()
