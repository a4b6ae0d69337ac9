"""The fused LSTM kernel built with the package's flags against the previous build
(``-O3 -march=native -ffast-math``), side by side in one process, plus what each does with NaN.

Usage: OMP_NUM_THREADS=1 python benchmarks/fused_kernel_flags.py [--repeats 30]

Both builds are of the same source (``src/l2o/rules/fused_lstm_cpu.cpp``, whose sigmoid under
``-ffast-math`` is the previous one: clamped argument, glibc's exp; the old build registers its
ops under another namespace). Timed: one forward and one backward of an L2O-DM layer
(``in`` = 2 and 20, ``H`` = 20) over 15,910 and 159,100 coordinates (``mlp-orig``, 1 and 10
instances), alternating between the builds, medians. Writes
``benchmarks/results/fused_kernel_flags-cpu.json``.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, write
from l2o.rules import fused_lstm

OLD = ("l2o_fused_lstm_cpu_fastmath_bench", ["-O3", "-march=native", "-ffast-math"])


def uses_libmvec(name: str) -> bool | None:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    libs = sorted(glob.glob(f"{root}/**/{name}*/{name}*.so", recursive=True), key=os.path.getmtime)
    if not libs:
        return None
    out = subprocess.run(["nm", "-D", libs[-1]], capture_output=True, text=True).stdout
    return "_ZGV" in out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    assert fused_lstm.cpu_kernel_available()
    builds = {
        "new": torch.ops.l2o_fused_lstm,
        "old-fast-math": getattr(
            torch.ops, fused_lstm.build_kernel(OLD[0], OLD[1], "l2o_fused_lstm_fastmath")
        ),
    }
    result: dict = {
        "flags": {
            "new": [*fused_lstm.OPT_FLAGS, *fused_lstm.ISA_FLAGS.get(fused_lstm.isa().upper(), [])],
            "old-fast-math": OLD[1],
        },
        "isa": fused_lstm.isa(),
        "vector_exp_libmvec": {
            "new": uses_libmvec(f"l2o_fused_lstm_cpu_{fused_lstm.isa()}"),
            "old-fast-math": uses_libmvec(OLD[0]),
        },
        "note": "shared 2-core machine; medians of alternating calls",
    }
    torch.manual_seed(0)
    timings = {}
    for k, n in [(2, 15910), (20, 15910), (2, 159100), (20, 159100)]:
        hid = 20
        x, h, c = torch.randn(k, n), torch.randn(hid, n), torch.randn(hid, n) * 2
        wt, b = torch.randn(4 * hid, k + hid) * 0.3, torch.randn(4 * hid) * 0.3
        dh, dc = torch.randn(hid, n), torch.randn(hid, n)
        cn = builds["new"].fwd(x, h, c, wt, b, fused_lstm.CPU_TILE)[1]
        times = {f"{b_}/{part}": [] for b_ in builds for part in ("fwd", "bwd")}
        for _ in range(a.repeats):
            for name, ops in builds.items():
                t0 = time.perf_counter()
                ops.fwd(x, h, c, wt, b, fused_lstm.CPU_TILE)
                t1 = time.perf_counter()
                ops.bwd(x, h, c, cn, wt, b, dh, dc, fused_lstm.CPU_TILE)
                t2 = time.perf_counter()
                times[f"{name}/fwd"].append(t1 - t0)
                times[f"{name}/bwd"].append(t2 - t1)
        med = {key: median(v) * 1e3 for key, v in times.items()}
        entry = {"median_ms": med}
        for part in ("fwd", "bwd"):
            entry[f"{part}_old_over_new"] = med[f"old-fast-math/{part}"] / med[f"new/{part}"]
        timings[f"in={k},N={n}"] = entry
        print(k, n, {key: round(v, 3) for key, v in entry.items() if "over" in key}, flush=True)
    result["timings"] = timings
    # What each build does with a NaN / inf in its input (the reference gives NaN, 1, 0 gates).
    x = torch.zeros(2, 64)
    x[0, 3], x[0, 20], x[0, 40] = float("nan"), float("inf"), float("-inf")
    h, c = torch.zeros(20, 64), torch.zeros(20, 64)
    wt, b = torch.full((80, 22), 0.1), torch.zeros(80)
    nan_cols = {}
    for name, ops in builds.items():
        hn, cn = ops.fwd(x, h, c, wt, b, fused_lstm.CPU_TILE)
        nan_cols[name] = sorted(set(torch.nonzero(torch.isnan(hn))[:, 1].tolist()))
    result["nan_columns_of_h_for_nan_in_column_3"] = nan_cols
    print(result["vector_exp_libmvec"], nan_cols, flush=True)
    write("fused_kernel_flags-cpu", result)


if __name__ == "__main__":
    main()
