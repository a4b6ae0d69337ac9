"""Variant (b) of issue 12: keep the gate activations instead of recomputing them (ops fwd_store /
bwd_stored), against the recomputing kernel; one L2O-DM layer, 15,910 coordinates, medians of 20.

Usage: OMP_NUM_THREADS=1 python benchmarks/fused_store_vs_recompute.py (at this commit only: the
variant was not kept, see docs/performance.md)."""

import statistics
import time

import torch

from l2o.rules import fused_lstm

assert fused_lstm.cpu_kernel_available()
ops = torch.ops.l2o_fused_lstm
torch.manual_seed(0)
for k in (2, 20):
    n, hid = 15910, 20
    x, h, c = torch.randn(k, n), torch.randn(hid, n), torch.randn(hid, n)
    wt, b = torch.randn(80, k + hid) * 0.3, torch.randn(80) * 0.3
    dh, dc = torch.randn(hid, n), torch.randn(hid, n)
    hn, cn = ops.fwd(x, h, c, wt, b, 512)
    hn2, cn2, s = ops.fwd_store(x, h, c, wt, b, 512)
    assert torch.equal(hn, hn2) and torch.equal(cn, cn2)
    g1 = ops.bwd(x, h, c, cn, wt, b, dh, dc, 512)
    g2 = ops.bwd_stored(x, h, c, cn, s, wt, dh, dc, 512)
    print([(a - b_).abs().max().item() for a, b_ in zip(g1, g2, strict=True)])
    T = {t: [] for t in ("recompute", "store")}
    for _ in range(20):
        t0 = time.perf_counter()
        ops.fwd(x, h, c, wt, b, 512)
        ops.bwd(x, h, c, cn, wt, b, dh, dc, 512)
        T["recompute"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, _, s = ops.fwd_store(x, h, c, wt, b, 512)
        ops.bwd_stored(x, h, c, cn, s, wt, dh, dc, 512)
        T["store"].append(time.perf_counter() - t0)
    print(k, {t: round(statistics.median(v) * 1e3, 2) for t, v in T.items()})
