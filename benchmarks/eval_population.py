"""Evaluation of S seeds as one batched population versus S sequential single-seed runs.

Usage: python benchmarks/eval_population.py [--task mlp-orig] [--seeds 10] [--steps 300]
       [--repeats 3] [--rule adam] [--device cpu]

The two variants alternate within one run (noisy shared machines: compare ratios measured side by
side) and the medians are reported. Writes benchmarks/results/eval_population.json.
"""

from __future__ import annotations

import argparse

import torch

from common import median, timed, write
from l2o import evaluate, get_task, load_rule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mlp-orig")
    p.add_argument("--rule", default="adam")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    task = get_task(a.task)
    seeds = list(range(a.seeds))

    def batched():
        evaluate(load_rule(a.rule), task, a.steps, seeds, device=a.device)

    def sequential():
        for s in seeds:
            evaluate(load_rule(a.rule), task, a.steps, [s], device=a.device)

    learned = isinstance(load_rule(a.rule), torch.nn.Module)
    compiled_rule = load_rule(a.rule)

    def batched_compiled():
        evaluate(compiled_rule, task, a.steps, seeds, device=a.device, compile=True)

    batched()  # warm-up (data loading, allocator)
    if learned:
        batched_compiled()  # warm-up: compilation
    t_batched, t_seq, t_comp = [], [], []
    for _ in range(a.repeats):
        t_batched += timed(batched, 1)
        t_seq += timed(sequential, 1)
        if learned:
            t_comp += timed(batched_compiled, 1)
    mb, ms = median(t_batched), median(t_seq)
    extra = {}
    if learned:
        extra = {
            "batched_compiled_seconds": t_comp,
            "compile_speedup_median": mb / median(t_comp),
        }
    write(
        f"eval_population-{a.rule.replace(':', '-')}-{a.task}-{a.device}",
        {
            "task": a.task,
            "rule": a.rule,
            "seeds": a.seeds,
            "steps": a.steps,
            "device": a.device,
            "batched_seconds": t_batched,
            "sequential_seconds": t_seq,
            "batched_seed_steps_per_second": a.seeds * a.steps / mb,
            "sequential_seed_steps_per_second": a.seeds * a.steps / ms,
            "speedup_median": ms / mb,
            **extra,
        },
        a.out,
    )


if __name__ == "__main__":
    main()
