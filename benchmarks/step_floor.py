"""How fast could an exact meta-training step be on this CPU? A floor, measured.

Usage: OMP_NUM_THREADS=1 python benchmarks/step_floor.py [--part dm,scale] [--repeats 7]

Part ``dm`` (writes ``benchmarks/results/step_floor-dm-cpu.json``):

Issue 12 asks for L2O-DM meta-training at 2x today's compiled ``l2o``. This script measures, in
one process and alternately, the time of today's epoch (``dm`` recipe, ``mlp-orig``, 100 optimizee
steps with 5 meta-steps, compiled; the reference cell and the fused cell) and of the work that
*any* exact implementation of the same step must do, whatever its kernels:

* ``gemm``: the six matrix products of one step of the two-layer, 20-unit coordinatewise LSTM
  (Andrychowicz et al. 2016) over the 15,910 coordinates of the MLP: the forward's gate products
  of both layers (``[80, 22] @ [22, N]``, ``[80, 40] @ [40, N]``), the backward's products to the
  recurrent/lower inputs (``[20, 80] @ [80, N]``, ``[40, 80] @ [80, N]``) and to the weights
  (``[80, N] @ [N, 22]``, ``[80, N] @ [N, 40]``). A backward that recomputes the gates (the fused
  cell) does two more; this floor counts none of them.
* ``activations``: the forward's gate nonlinearities, one sigmoid over ``[100, N]`` per layer
  (four gates and ``tanh(c)``, ``tanh`` through ``sigmoid`` as the package does); the backward's
  pointwise work, the optimizee's loss and gradient, the readout and the meta-optimizer are left
  out, so the floor is lower than what is reachable.
* evaluation (``evaluate`` of L2O-DM, 10 seeds as one population, no gradients): today's
  compiled reference cell and the fused cell against the forward's two gate products and its
  activations over the population's coordinates, in the chunks ``evaluate`` uses
  (``l2o.evaluation.CHUNK_COORDINATES``).
* ``peak``: the machine's float32 matmul rate on a large square product (1,024^3), to state the
  floor also as "the step's FLOPs at the best rate this core reaches".

Part ``scale`` (``step_floor-scale-cpu.json``): today's compiled L2O-Scale epoch (``scale``
recipe, ``mlp-orig``) against the optimizee's work alone that its meta-objective prescribes
(Wichrowska et al. 2017, docs/method.md 3.2): the loss and gradient on the unroll's 10,000-example
subset at every step but the first of each unroll, and on the rule's minibatch at every step
(as the task computes them), and only the two large matrix products of those (a strict floor).

The ratio ``today / floor`` bounds the speed-up any rewrite of the step can give on this CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, timed, write
from fused_speed import alternate, eval_fn, trainer_epoch

HIDDEN, GATES = 20, 80  # 4 gates x 20 units
STEPS = 100  # optimizee steps in one epoch of the dm recipe


def gemm_fn(n: int):
    """The six products of one step, ``STEPS`` times."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(GATES, 22, generator=g), torch.randn(GATES, 40, generator=g)
    x1, x2 = torch.randn(22, n, generator=g), torch.randn(40, n, generator=g)
    d1, d2 = torch.randn(GATES, n, generator=g), torch.randn(GATES, n, generator=g)
    out = torch.empty(GATES, n)
    dx1, dx2 = torch.empty(HIDDEN, n), torch.empty(40, n)
    dw1, dw2 = torch.zeros(GATES, 22), torch.zeros(GATES, 40)
    w1h = w1[:, 2:].t().contiguous()  # the recurrent part: the input's gradient is not needed
    w2t = w2.t().contiguous()
    x1t, x2t = x1.t(), x2.t()

    def run():
        for _ in range(STEPS):
            torch.mm(w1, x1, out=out)
            torch.mm(w2, x2, out=out)
            torch.mm(w1h, d1, out=dx1)
            torch.mm(w2t, d2, out=dx2)
            dw1.addmm_(d1, x1t)
            dw2.addmm_(d2, x2t)

    flops = STEPS * 2 * n * (GATES * 22 + GATES * 40 + HIDDEN * GATES + 40 * GATES)
    flops += STEPS * 2 * n * (GATES * 22 + GATES * 40)
    return run, flops


def activation_fn(n: int):
    """The forward's gate nonlinearities of both layers, ``STEPS`` times."""
    z = torch.randn(GATES + HIDDEN, n, generator=torch.Generator().manual_seed(1))
    out = torch.empty_like(z)

    def run():
        for _ in range(STEPS):
            torch.sigmoid(z, out=out)
            torch.sigmoid(z, out=out)

    return run


def eval_floor_fn(n: int, chunk: int):
    """The forward's gate products and activations of ``STEPS`` evaluation steps over ``n``
    coordinates, in chunks of at most ``chunk`` columns."""
    g = torch.Generator().manual_seed(2)
    w1, w2 = torch.randn(GATES, 22, generator=g), torch.randn(GATES, 40, generator=g)
    width = min(n, chunk)
    x1, x2 = torch.randn(22, width, generator=g), torch.randn(40, width, generator=g)
    out = torch.empty(GATES + HIDDEN, width)
    bounds = [(a, min(n, a + chunk)) for a in range(0, n, chunk)]

    def run():
        for _ in range(STEPS):
            for a, b in bounds:
                w = b - a
                torch.mm(w1, x1[:, :w], out=out[:GATES, :w])
                torch.sigmoid(out[:, :w], out=out[:, :w])
                torch.mm(w2, x2[:, :w], out=out[:GATES, :w])
                torch.sigmoid(out[:, :w], out=out[:, :w])

    return run


def scale_floor_fn(steps: int, unroll: int, subset: int):
    """The optimizee's loss and gradient that an L2O-Scale epoch of ``steps`` steps computes:
    on the objective subset at every step but each unroll's first, on the minibatch at every
    step."""
    from l2o.tasks import get_task
    from l2o.training.unroll import ObjectiveSubsets, loss_and_grad

    task = get_task("mlp-orig")
    x = task.init([0])
    big = ObjectiveSubsets(task, [0], "train", subset).next()
    stream = task.stream([0], "train")

    def run():
        for t in range(steps):
            if t % unroll:
                loss_and_grad(task, x, big, None)
            loss_and_grad(task, x, stream.next(), None)

    return run


def scale_products_fn(steps: int, unroll: int, subset: int):
    """Only the two large products of those evaluations: the first layer's forward on the
    subset (``[subset, 784] @ [784, 20]``) and its weight gradient (``[784, subset] @ [subset,
    20]``), at every step but each unroll's first."""
    g = torch.Generator().manual_seed(3)
    data, w = torch.randn(subset, 784, generator=g), torch.randn(784, 20, generator=g)
    dh = torch.randn(subset, 20, generator=g)
    out, dw = torch.empty(subset, 20), torch.empty(784, 20)
    data_t = data.t()

    def run():
        for t in range(steps):
            if t % unroll:
                torch.mm(data, w, out=out)
                torch.mm(data_t, dh, out=dw)

    return run


def scale_part(args) -> None:
    from l2o.training import get_recipe

    cfg = get_recipe("scale").config("demo", task="mlp-orig", instances=1)
    steps, unroll, subset = cfg.horizon, cfg.unroll_length, cfg.meta_objective.subset
    variants = {
        "l2o": trainer_epoch("scale", "fused", compile=True)[0],
        "optimizee": scale_floor_fn(steps, unroll, subset),
        "products": scale_products_fn(steps, unroll, subset),
    }
    times = alternate(variants, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    result = {
        "what": f"seconds per epoch of {steps} optimizee steps (L2O-Scale, mlp-orig, 1 "
        f"instance, unrolls of {unroll}, objective subset {subset}); optimizee: only the loss "
        "and gradient evaluations of such an epoch",
        "times": times,
        "median_seconds": med,
        "steps_per_second": {k: steps / v for k, v in med.items()},
        "bound_today_over_floor": med["l2o"] / med["optimizee"],
        "bound_today_over_products": med["l2o"] / med["products"],
        "threads": torch.get_num_threads(),
    }
    write("step_floor-scale-cpu", result)
    print(
        f"L2O-Scale today {steps / med['l2o']:.1f} steps/s; its optimizee work alone "
        f"{steps / med['optimizee']:.1f} steps/s: at most {result['bound_today_over_floor']:.2f}x "
        f"today's; its two large products alone {steps / med['products']:.1f} steps/s: at most "
        f"{result['bound_today_over_products']:.2f}x"
    )


def peak_rate(repeats: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    c = torch.empty(1024, 1024)
    torch.mm(a, b, out=c)
    seconds = median(timed(lambda: torch.mm(a, b, out=c), repeats))
    return 2 * 1024**3 / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="dm,scale", help="comma-separated: dm, scale")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seeds", type=int, default=10, help="evaluation population (dm part)")
    args = ap.parse_args()
    parts = args.part.split(",")
    unknown = set(parts) - {"dm", "scale"}
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(sorted(unknown))}; choose from dm, scale")
    if "dm" in parts:
        dm_part(args)
    if "scale" in parts:
        scale_part(args)


def dm_part(args) -> None:
    from l2o.evaluation import CHUNK_COORDINATES
    from l2o.tasks import get_task

    n = get_task("mlp-orig").num_params
    gemm, flops = gemm_fn(n)
    variants = {
        "l2o-reference": trainer_epoch("dm", "reference", compile=True)[0],
        "fused": trainer_epoch("dm", "fused", compile=True)[0],
        "gemm": gemm,
        "activations": activation_fn(n),
        "eval-reference": eval_fn("reference", STEPS, args.seeds),
        "eval-fused": eval_fn("fused", STEPS, args.seeds),
        "eval-floor": eval_floor_fn(n * args.seeds, CHUNK_COORDINATES),
    }
    gemm()
    times = alternate(variants, args.repeats)
    med = {k: median(v) for k, v in times.items()}
    peak = peak_rate(max(5, args.repeats))
    floor = med["gemm"] + med["activations"]
    today = med["l2o-reference"]
    result = {
        "what": "seconds per epoch of 100 optimizee steps (L2O-DM, mlp-orig, 1 instance); "
        "gemm/activations: only that part of an exact step's work, 100 times; eval-*: 100 "
        "population steps of evaluate (eval-floor: the forward's products and activations)",
        "coordinates": n,
        "times": times,
        "median_seconds": med,
        "steps_per_second": {k: STEPS / v for k, v in med.items()},
        "gemm_flops_per_epoch": flops,
        "gemm_rate_gflops": flops / med["gemm"] / 1e9,
        "peak_rate_gflops": peak / 1e9,
        "floor_seconds": floor,
        "bound_today_over_floor": today / floor,
        "bound_today_over_peak_flops": today / (flops / peak),
        "fused_over_today": today / med["fused"],
        "eval_seeds": args.seeds,
        "eval_bound_today_over_floor": med["eval-reference"] / med["eval-floor"],
        "eval_fused_over_today": med["eval-reference"] / med["eval-fused"],
        "threads": torch.get_num_threads(),
    }
    write("step_floor-dm-cpu", result)
    print(
        f"today {STEPS / today:.1f} steps/s, fused {STEPS / med['fused']:.1f}; the six products "
        f"alone {STEPS / med['gemm']:.1f} steps/s at {result['gemm_rate_gflops']:.1f} GFLOP/s "
        f"(large matmul: {peak / 1e9:.1f}); products + forward activations "
        f"{STEPS / floor:.1f} steps/s: at most {today / floor:.2f}x today's. Evaluation of "
        f"{args.seeds} seeds: today {STEPS / med['eval-reference']:.1f} population steps/s, fused "
        f"{STEPS / med['eval-fused']:.1f}, forward products + activations alone "
        f"{STEPS / med['eval-floor']:.1f}: at most {result['eval_bound_today_over_floor']:.2f}x "
        "today's"
    )


if __name__ == "__main__":
    main()
