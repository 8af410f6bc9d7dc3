"""What optimised ReLU lower slopes at the dense head (alpha-CROWN's idea) would buy the t = 2
cover: for every block the cover bounds, the margins at the cut (``boxes._spec_backward``'s
first stage) again with the head's unstable ReLUs given the lower slopes that maximise each
margin's bound (Adam on the slopes, projected to [0, 1]; the bound is concave in them).

    /work/torchenv/bin/python benchmarks/certify_alpha_head.py --model mnist_maxpool --image 3

A measurement, not part of the certifier: PyTorch is used here for the gradient only. The head must
be the cut, a dense layer, a ReLU and the output layer (the zoo's MNIST CNNs). Reports how many
blocks fail after the full bound (cut and deep pass) and how many of those the optimised slopes
prove at the cut.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from certify_budget import zoo_mnist

from l0tre_core.certify import InputSet, certify
from l0tre_core.certify import boxes as bx
from l0tre_core.certify.bounds import spec_matrix
from l0tre_core.certify.problem import Budget


def least(terms: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``Budget.least`` on ``terms [n, F, R]``."""
    terms = torch.clamp(terms, max=0.0)
    n, f = terms.shape[:2]
    terms = terms.reshape(n, f // budget.width, budget.width, -1).sum(2)
    if budget.pixels >= terms.shape[1]:
        return terms.sum(1)
    return torch.topk(terms, budget.pixels, dim=1, largest=False).values.sum(1)


def head_bounds(prob: Any, bounds: list[Any], sel: np.ndarray, eps_box: dict[int, np.ndarray], ref: int,
                cut_rows: dict[int, tuple[np.ndarray, np.ndarray]], head: tuple[Any, Any, Budget],
                steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The margins' bounds at the cut ``[n, R]`` with the head's own lower slopes, and with
    optimised ones."""
    net = prob.net
    k = net.cut
    dense, act, out = k + 1, k + 2, k + 3
    assert [net.nodes[j].kind for j in (dense, act, out)] == ["linear", "relu", "linear"] and out == net.output

    def t(a: Any) -> torch.Tensor:
        return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64)

    def eps(j: int) -> torch.Tensor | None:
        if j in eps_box:
            return t(eps_box[j][sel])
        e = prob.rounding(j)
        return None if e is None else t(e)[None].expand(len(sel), -1)

    w1, b1 = t(net.nodes[dense].mats[0]), t(net.nodes[dense].bias)
    w2, b2 = t(net.nodes[out].mats[0]), t(net.nodes[out].bias)
    lo, up = t(bounds[dense][0][sel]), t(bounds[dense][1][sel])
    e1, e2 = eps(dense), eps(out)
    lk, uk = (t(x[sel]) for x in cut_rows[k])
    hlo, hhi, budget = head
    hlo, hhi = t(hlo[sel]), t(hhi[sel])
    spec = t(spec_matrix(net.n_outputs, ref))
    n, r = len(sel), spec.shape[0]
    unstable = (lo < 0) & (up > 0)
    active = (lo >= 0).double()
    su = torch.where(unstable, up / (up - lo).clamp(min=1e-300), active)
    bu = torch.where(unstable, -su * lo, torch.zeros_like(lo))
    own = torch.where(unstable, (up > -lo).double(), active)  # the certifier's adaptive slopes

    def bound(alpha: torch.Tensor) -> torch.Tensor:
        a2 = (spec @ w2)[None].expand(n, -1, -1)
        c = (spec @ b2)[None].expand(n, -1)
        if e2 is not None:
            c = c - (spec.abs()[None] * e2[:, None, :]).sum(-1)
        pos, neg = a2.clamp(min=0), a2.clamp(max=0)
        a1 = pos * torch.where(unstable[:, None, :], alpha, active[:, None, :]) + neg * su[:, None, :]
        c = c + (neg * bu[:, None, :]).sum(-1) + a1 @ b1
        if e1 is not None:
            c = c - (a1.abs() * e1[:, None, :]).sum(-1)
        a0 = a1 @ w1
        rows = a0.clamp(min=0) @ lk.transpose(1, 2) + a0.clamp(max=0) @ uk.transpose(1, 2)  # [n, R, F+1]
        co = rows[:, :, :-1].transpose(1, 2)
        return c + rows[:, :, -1] + least(torch.minimum(co * hlo[:, :, None], co * hhi[:, :, None]), budget)

    start = own[:, None, :].expand(-1, r, -1).clone()
    with torch.no_grad():
        base = bound(start)
    alpha = start.requires_grad_(True)
    opt = torch.optim.Adam([alpha], lr=0.1)
    best = base.clone()
    for _ in range(steps):
        val = bound(alpha)
        best = torch.maximum(best, val.detach())
        opt.zero_grad()
        (-val.sum()).backward()
        opt.step()
        with torch.no_grad():
            alpha.clamp_(0, 1)
    return base, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist_maxpool")
    ap.add_argument("--image", type=int, default=3, help="a correctly classified held-out image")
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    net, xs, ys = zoo_mnist(args.model)
    x, ref = xs[args.image], int(ys[args.image])
    inputs = InputSet(x0=x, lo=np.zeros(784), hi=np.ones(784), pixel=np.arange(784), n_pixels=784)
    certify(net, inputs, ref, 1, time_limit=60)  # as the engine runs it: t = 1 first
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    plain = bx._spec_backward

    def spy(prob: Any, bounds: list[Any], sel: np.ndarray, S: np.ndarray, dlo: np.ndarray, dhi: np.ndarray,
            eps_box: dict[int, np.ndarray], ref: int, pools: Any = None, cut_rows: Any = None,
            slack: Any = None, budget: Any = None, head: Any = None) -> np.ndarray:
        lb = plain(prob, bounds, sel, S, dlo, dhi, eps_box, ref, pools, cut_rows=cut_rows, slack=slack,
                   budget=budget, head=head)
        if budget is not None and cut_rows:
            base, best = head_bounds(prob, bounds, sel, eps_box, ref, cut_rows, head, args.steps)
            s = 0.0 if slack is None else np.asarray(slack)
            m0 = bx.clean_margins(prob, ref)[None]
            seen.append((((base.numpy() - s) / m0).min(1), ((best.numpy() - s) / m0).min(1),
                         (lb - s).min(1) > 0))
        return lb

    bx._spec_backward = spy
    verdict = certify(net, inputs, ref, 2, time_limit=600)
    bx._spec_backward = plain
    base, best, proven = (np.concatenate([s[i] for s in seen]) for i in range(3))
    fail = ~proven
    print(f"{args.model} image {args.image}, t = 2: {verdict.status} ({verdict.detail})")
    print(f"blocks through the backward pass: {len(base)}; proven at the cut {(base > 0).sum()}, "
          f"with optimised head slopes {(best > 0).sum()}; proven in all {proven.sum()}")
    print(f"failing after the full bound: {fail.sum()}, of which the optimised head slopes prove "
          f"{(best[fail] > 0).sum()}; median gain at the cut {np.median(best[fail] - base[fail]):.3f} clean "
          f"margins (median cut bound {np.median(base[fail]):.3f})")


if __name__ == "__main__":
    main()
