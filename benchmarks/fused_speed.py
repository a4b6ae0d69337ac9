"""The fused LSTM step against today's compiled ``l2o`` and a plain eager PyTorch loop, in one run.

Usage: python benchmarks/fused_speed.py [--repeats 5] [--eval-steps 100] [--skip scale,...]
       [--out PATH]

Parts (each variant is timed alternately with the others, ``--repeats`` times, medians reported;
run with ``OMP_NUM_THREADS=1``: the development machine is shared):

* ``dm``: L2O-DM meta-training on ``mlp-orig`` (784-20-10 sigmoid, real MNIST, T = 20 unrolls,
  1 instance; one epoch of the ``dm`` recipe = 100 optimizee steps with 5 meta-steps):
  ``plain`` (the loop below: eager, keeps the optimizee graph, ``nn.LSTMCell``-style gates),
  ``l2o-reference`` (today's ``l2o``: compiled step, the reference cell; ``L2O_LSTM=reference``),
  ``fused`` (compiled step, fused cell) and ``fused-eager``.
* ``rnnprop`` and ``scale``: the same epoch of their recipes, reference against fused (L2O-Scale
  has no LSTM; its figure shows the rest of the hot loop).
* ``eval``: ``evaluate`` of L2O-DM, 10 seeds as one population, compiled: reference cell,
  ``fused`` (the per-layer fused cell, the default).
* ``memory``: peak resident memory of one 20-step L2O-DM unroll with its meta-gradient (eager),
  each variant in a fresh subprocess: ``ru_maxrss`` after minus before the unroll.

Writes ``benchmarks/results/fused_speed-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, timed, write
from l2o.rules import fused_lstm


def use(mode: str) -> None:
    """Select the LSTM cell of every rule: ``reference``, ``fused`` or ``torch``."""
    fused_lstm.MODE = "fused" if mode == "reference" else mode
    fused_lstm.USE_FUSED = mode != "reference"


# ---------------------------------------------------------------------------------------------
# The plain PyTorch reference: L2O-DM meta-training written the obvious way.


class PlainDM(torch.nn.Module):
    """L2O-DM with ``nn.LSTMCell``-style gates, row-major ``[P, features]``, ``torch.tanh``."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.cell1 = torch.nn.LSTMCell(2, hidden)
        self.cell2 = torch.nn.LSTMCell(hidden, hidden)
        self.out = torch.nn.Linear(hidden, 1)

    def forward(self, g, state):
        log = torch.clamp_min(torch.log(g.abs() + 1.1920929e-07) / 5.0, -1.0)
        sign = torch.clamp(g * 148.4131591025766, -1.0, 1.0)
        inp = torch.stack([log, sign], dim=1)
        h1, c1 = self.cell1(inp, (state[0], state[1]))
        h2, c2 = self.cell2(h1, (state[2], state[3]))
        return 0.01 * self.out(h2)[:, 0], (h1, c1, h2, c2)


def plain_epoch_factory(steps: int = 100, unroll: int = 20):
    from l2o.tasks import get_task

    task = get_task("mlp-orig")
    stream = task.stream([0], "train")
    shapes = [(784, 20), (20,), (20, 10), (10,)]
    sizes = [torch.Size(s).numel() for s in shapes]
    torch.manual_seed(0)
    rule = PlainDM()
    meta_opt = torch.optim.Adam(rule.parameters(), lr=1e-3)

    def loss_fn(x, batch):
        images, labels = batch
        w1, b1, w2, b2 = (t.view(s) for t, s in zip(x.split(sizes), shapes, strict=True))
        hidden = torch.sigmoid(images[0].flatten(1) @ w1 + b1)
        return F.cross_entropy(hidden @ w2 + b2, labels[0])

    def epoch():
        x = task.init([0])[0].requires_grad_(True)
        p = x.numel()
        state = tuple(torch.zeros(p, 20) for _ in range(4))
        for _ in range(steps // unroll):
            meta_loss = 0.0
            for _ in range(unroll):
                loss = loss_fn(x, stream.next())
                (g,) = torch.autograd.grad(loss, x, retain_graph=True)
                delta, state = rule(g.detach(), state)
                x = x + delta
                meta_loss = meta_loss + loss
            meta_loss = meta_loss + loss_fn(x, stream.next())
            meta_opt.zero_grad()
            meta_loss.backward()
            meta_opt.step()
            x = x.detach().requires_grad_(True)
            state = tuple(s.detach() for s in state)

    return epoch


# ---------------------------------------------------------------------------------------------


def trainer_epoch(recipe: str, mode: str, compile: bool):
    from l2o.training import Trainer, get_recipe

    use(mode)
    cfg = get_recipe(recipe).config("demo", task="mlp-orig", compile=compile, instances=1)
    trainer = Trainer(cfg, tempfile.mkdtemp(prefix="l2o-bench-"))

    def epoch():
        use(mode)
        trainer.train_epoch()

    epoch()  # warm-up and compilation
    return epoch, cfg.horizon


def eval_fn(mode: str, steps: int, seeds: int):
    from l2o import evaluate
    from l2o.rules.dm import DMRule
    from l2o.tasks import get_task

    torch.manual_seed(0)
    rule, task = DMRule(), get_task("mlp-orig")

    def run():
        use(mode)
        evaluate(rule, task, steps, list(range(seeds)), compile=True)

    run()
    return run


def alternate(variants: dict, repeats: int) -> dict[str, list[float]]:
    times = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k] += timed(fn, 1)
    return times


MEMORY_CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
from fused_speed import use, vm
use({mode!r})
from l2o.rules.dm import DMRule
from l2o.tasks import get_task
from l2o.training.unroll import start_trajectory, unroll
torch.manual_seed(0)
rule, task = DMRule(), get_task("mlp-orig")
stream = task.stream([0], "train")
traj = start_trajectory(rule, task, task.init([0]), stream)
small = start_trajectory(rule, task, task.init([0]), stream)
s, _, _ = unroll(rule, task, small, stream, 1)  # warm every kernel up, at one step
s.backward()
del s, small
saved = {{}}
def pack(t):
    saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return t
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = vm("VmRSS")
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    s, _, _ = unroll(rule, task, traj, stream, 20)
s.backward()
print(before, vm("VmHWM"), sum(saved.values()))
"""


def vm(key: str) -> int:
    """A ``/proc/self/status`` memory figure in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def memory(mode: str) -> dict[str, float]:
    """Peak RSS growth (``VmHWM`` after resetting it, minus ``VmRSS`` before) of one 20-step
    unroll with its backward, and the bytes autograd saved for the backward, in MiB."""
    code = MEMORY_CHILD.format(bench=str(Path(__file__).resolve().parent), mode=mode)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    before, peak, saved = (int(v) for v in out.stdout.split()[-3:])
    return {"unroll_peak_mib": (peak - before) / 1024, "saved_for_backward_mib": saved / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--eval-seeds", type=int, default=10)
    p.add_argument("--skip", default="", help="comma-separated parts to skip")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    fused_lstm.cpu_kernel_available()
    # Every variant compiles the same ``step`` code: keep them all compiled (not eager after 8).
    torch._dynamo.config.recompile_limit = 256
    result: dict = {
        "threads": torch.get_num_threads(),
        "cpu_kernel": fused_lstm.cpu_kernel_available(),
        "note": "shared 2-core machine; ratios of medians of alternating runs",
    }

    def report(name: str, times: dict, steps: int, base: str) -> None:
        meds = {k: median(v) for k, v in times.items()}
        result[name] = {
            "seconds": times,
            "steps_per_second": {k: steps / m for k, m in meds.items()},
            f"speedup_vs_{base}": {k: meds[base] / m for k, m in meds.items()},
        }
        if name == "dm":
            result[name]["speedup_vs_plain"] = {k: meds["plain"] / m for k, m in meds.items()}
        print(json.dumps({name: result[name]["steps_per_second"]}), flush=True)

    if "dm" not in skip:
        variants, horizon = {}, 100
        variants["plain"] = plain_epoch_factory()
        variants["plain"]()
        variants["l2o-reference"], horizon = trainer_epoch("dm", "reference", True)
        variants["fused"], _ = trainer_epoch("dm", "fused", True)
        variants["fused-eager"], _ = trainer_epoch("dm", "fused", False)
        report("dm", alternate(variants, a.repeats), horizon, "l2o-reference")
    for model in ("rnnprop", "scale"):
        if model in skip:
            continue
        variants = {}
        variants["l2o-reference"], horizon = trainer_epoch(model, "reference", True)
        variants["fused"], _ = trainer_epoch(model, "fused", True)
        report(model, alternate(variants, a.repeats), horizon, "l2o-reference")
    if "eval" not in skip:
        modes = ("reference", "fused")
        variants = {m: eval_fn(m, a.eval_steps, a.eval_seeds) for m in modes}
        report("eval", alternate(variants, a.repeats), a.eval_steps, "reference")
    if "memory" not in skip:
        result["memory"] = {m: memory(m) for m in ("reference", "fused", "torch")}
        ref = result["memory"]["reference"]
        for m in result["memory"].values():
            for key in ("unroll_peak_mib", "saved_for_backward_mib"):
                m[key + "_fraction_of_reference"] = m[key] / ref[key] if ref[key] > 0 else None
        print(json.dumps(result["memory"]), flush=True)
    result["own_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write("fused_speed-cpu", result, a.out)


if __name__ == "__main__":
    main()
