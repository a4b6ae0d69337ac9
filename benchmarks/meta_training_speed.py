"""Meta-training speed: optimizee steps per second including the meta-gradient, eager vs compiled.

Usage: python benchmarks/meta_training_speed.py [--model dm] [--task mlp-orig] [--epochs 3]
       [--repeats 3] [--device cpu] [--instances 1]

Each measurement is one epoch of the ``dm`` recipe (100 steps = 5 unrolls of 20, each with its
meta-step), timed after a warm-up epoch; eager and ``torch.compile`` variants alternate and the
medians are reported. Also times evaluation (no meta-gradient) of the same rule on 10 seeds.
Writes benchmarks/results/meta_training_speed-<model>-<device>.json.
"""

from __future__ import annotations

import argparse
import tempfile

from common import median, timed, write
from l2o import evaluate
from l2o.training import Trainer, get_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="dm", choices=["dm", "rnnprop", "scale"])
    p.add_argument("--task", default="mlp-orig")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--eval-seeds", type=int, default=10)
    p.add_argument("--eval-steps", type=int, default=200)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    recipe = {"dm": "dm", "rnnprop": "rnnprop", "scale": "scale"}[a.model]
    trainers = {}
    for compiled in (False, True):
        cfg = get_recipe(recipe).config(
            "demo", task=a.task, device=a.device, compile=compiled, instances=a.instances
        )
        trainers[compiled] = Trainer(cfg, tempfile.mkdtemp(prefix="l2o-bench-"))
        trainers[compiled].train_epoch()  # warm-up (and compilation)
    times = {False: [], True: []}
    for _ in range(a.repeats):
        for compiled, trainer in trainers.items():
            times[compiled] += timed(trainer.train_epoch, 1)
    horizon = trainers[False].config.horizon
    rule = trainers[False].rule
    from l2o.tasks import get_task

    task = get_task(a.task)
    seeds = list(range(a.eval_seeds))
    evaluate(rule, task, 20, seeds, device=a.device)
    t_eval = timed(lambda: evaluate(rule, task, a.eval_steps, seeds, device=a.device), a.repeats)
    eager, compiled = median(times[False]), median(times[True])
    write(
        f"meta_training_speed-{a.model}-{a.device}",
        {
            "model": a.model,
            "task": a.task,
            "device": a.device,
            "instances": a.instances,
            "horizon": horizon,
            "eager_epoch_seconds": times[False],
            "compiled_epoch_seconds": times[True],
            "eager_steps_per_second": horizon / eager,
            "compiled_steps_per_second": horizon / compiled,
            "compile_speedup": eager / compiled,
            "eval_seeds": a.eval_seeds,
            "eval_steps": a.eval_steps,
            "eval_seconds": t_eval,
            "eval_population_steps_per_second": a.eval_steps / median(t_eval),
        },
        a.out,
    )


if __name__ == "__main__":
    main()
