"""One process on more cores: the fused LSTM kernel's tiles shared among intra-op threads.

Usage: python benchmarks/fused_threads.py [--threads 1,2,2p] [--rounds 2] [--repeats 3]

Runs, alternately, one child process per setting of ``--threads`` (a thread count, set before
anything is compiled as ``l2o ... --threads N`` does; a trailing ``p`` runs the child with the
``l2o`` command's passive OpenMP wait policy, ``OMP_WAIT_POLICY=PASSIVE``, under which idle
workers sleep instead of spinning), ``--rounds`` times. ``--concurrent K`` starts K such children
at once for each setting (several ``l2o`` processes sharing the machine); every child's times
are kept. Each child times
L2O-DM meta-training (one epoch of the ``dm`` recipe on ``mlp-orig``: 100 optimizee steps,
compiled) and ``evaluate`` of L2O-DM on 10 seeds x 100 steps (compiled), with the fused cell and
with the reference cell, ``--repeats`` times after a warm-up. Writes
``benchmarks/results/fused_threads-cpu.json``: medians over all rounds and the speed-up of each
thread count over the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("train-fused", "train-reference", "eval-fused", "eval-reference")


def child(threads: int, repeats: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    from common import timed
    from fused_speed import eval_fn, trainer_epoch

    fns = {}
    for mode in ("fused", "reference"):
        fns[f"train-{mode}"] = trainer_epoch("dm", mode, compile=True)[0]
        fns[f"eval-{mode}"] = eval_fn(mode, 100, 10)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    print("RESULT " + json.dumps(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2,2p")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=1, help="children run at once")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.repeats)
        return
    sys.path.insert(0, str(HERE))
    from common import median, write

    counts = args.threads.split(",")
    times = {f"{v}@{t}": [] for v in VARIANTS for t in counts}
    for _ in range(args.rounds):
        for t in counts:
            n = t.rstrip("p")
            env = {
                k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")
            }
            env["OMP_NUM_THREADS"] = n
            if t.endswith("p"):
                env.update(OMP_WAIT_POLICY="PASSIVE", KMP_BLOCKTIME="0")
            cmd = [sys.executable, __file__, "--child", n, "--repeats", str(args.repeats)]
            procs = [
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(args.concurrent)
            ]
            for proc in procs:
                out, _ = proc.communicate()
                if proc.returncode:
                    raise SystemExit(f"child {cmd} failed with exit code {proc.returncode}")
                result = json.loads(out.split("RESULT ", 1)[1])
                for v in VARIANTS:
                    times[f"{v}@{t}"] += result[v]
    med = {k: median(v) for k, v in times.items()}
    speedup = {k: med[f"{k.split('@')[0]}@{counts[0]}"] / v for k, v in med.items()}
    name = "fused_threads-cpu" + (f"-concurrent{args.concurrent}" if args.concurrent > 1 else "")
    write(
        name,
        {
            "concurrent": args.concurrent,
            "what": "seconds per meta-training epoch (100 steps) / per evaluation of 100 steps "
            "x 10 seeds; L2O-DM on mlp-orig, compiled; one child process per thread count "
            "(suffix p: OMP_WAIT_POLICY=PASSIVE)",
            "threads": counts,
            "times": times,
            "median_seconds": med,
            "speedup_over_first": speedup,
        },
        args.out,
    )
    for v in VARIANTS:
        cells = ", ".join(
            f"{t}: {med[f'{v}@{t}']:.2f} s ({speedup[f'{v}@{t}']:.2f}x)" for t in counts
        )
        print(f"{v}: {cells}")


if __name__ == "__main__":
    main()
