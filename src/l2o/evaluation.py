"""Evaluation: run a rule on a task for ``steps`` steps over several seeds, as one population.

The protocol is the paper's (docs/method.md 6.1 and 0.7): every seed starts from a fresh
initialisation; each step takes the gradient on a fresh minibatch of the evaluation split (the test
split for the paper's tasks) and applies the rule; the value recorded for step ``t`` is the
minibatch loss of ``x_{t}`` (after ``t`` updates) on a fresh minibatch that the update producing it
never saw. To halve the work, that fresh minibatch is also the one the next gradient is taken on:
the recorded value is the same random variable as in the original, which used two separate batches.

Summaries follow the project's decisions (docs/method.md 0.7): ``final_ln_loss`` is, per seed, ln of
the mean loss over the last 100 steps; a seed whose loss turns NaN/inf or exceeds 1e6 is reported as
diverged, never silently dropped."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2o.compiling import CompiledStep
from l2o.rules.base import Rule
from l2o.tasks.base import Task, generators

DIVERGENCE_THRESHOLD = 1e6
FINAL_WINDOW = 100
CHECKPOINT_STEPS = (100, 1000, 5000)


@dataclass
class EvalResult:
    """Per-step losses of every seed plus what produced them.

    ``losses[i, t]`` is the loss of seed ``seeds[i]`` after ``t + 1`` updates.
    """

    rule: str
    hyperparameters: dict[str, Any]
    task: str
    task_options: dict[str, Any]
    split: str
    seeds: list[int]
    losses: np.ndarray
    initial_losses: np.ndarray
    seconds: float
    device: str
    steps_requested: int
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.losses.shape[1])

    def summary(self) -> dict[str, Any]:
        """The machine-readable summary written to ``summary.json``."""
        out = {
            "rule": self.rule,
            "hyperparameters": self.hyperparameters,
            "task": self.task,
            "task_options": self.task_options,
            "split": self.split,
            "steps": self.steps,
            "steps_requested": self.steps_requested,
            "seeds": list(self.seeds),
            "device": self.device,
            "initial_ln_loss": _ln_or_none(float(np.mean(self.initial_losses))),
            **summarize_losses(self.losses, self.seeds),
            "seconds": round(self.seconds, 3),
            "steps_per_second": round(self.steps / self.seconds, 3) if self.seconds > 0 else None,
            "interrupted": self.interrupted,
        }
        out.update(self.extra)
        return out


def _ln_or_none(value: float) -> float | None:
    return round(math.log(value), 6) if math.isfinite(value) and value > 0 else None


def diverged_mask(losses: np.ndarray) -> np.ndarray:
    """``[S]`` bool: seeds whose loss ever became NaN/inf or exceeded the divergence threshold."""
    bad = ~np.isfinite(losses) | (losses > DIVERGENCE_THRESHOLD)
    return bad.any(axis=1)


def summarize_losses(losses: np.ndarray, seeds: Sequence[int]) -> dict[str, Any]:
    """``final_ln_loss`` (per seed and mean/min/max over converged seeds), ``ln_mean_loss_at``
    (ln of the mean over converged seeds of the 100-step window ending at each checkpoint step),
    and ``diverged_seeds``."""
    steps = losses.shape[1]
    diverged = diverged_mask(losses)
    window = min(FINAL_WINDOW, steps)
    per_seed = [
        None if d else _ln_or_none(float(np.mean(row[-window:])))
        for row, d in zip(losses, diverged, strict=True)
    ]
    finite = [v for v in per_seed if v is not None]
    ok = losses[~diverged]
    at = {}
    for k in (*CHECKPOINT_STEPS, steps):
        if k <= steps and ok.size:
            at[str(k)] = _ln_or_none(float(ok[:, max(0, k - FINAL_WINDOW) : k].mean()))
    return {
        "final_ln_loss": {
            "per_seed": per_seed,
            "mean": round(float(np.mean(finite)), 6) if finite else None,
            "min": round(float(np.min(finite)), 6) if finite else None,
            "max": round(float(np.max(finite)), 6) if finite else None,
        },
        "ln_mean_loss_at": at,
        "diverged_seeds": [int(s) for s, d in zip(seeds, diverged, strict=True) if d],
    }


def init_rule_state(rule: Rule, x: torch.Tensor, task: Task, seeds: Sequence[int]):
    """``rule.init`` with one generator per instance (the seed's ``"optimizer"`` stream), so a
    rule with a random initial state (L2O-Scale's initial learning rates) gives every seed the
    same run whoever its neighbours are; rules without randomness ignore it."""
    return rule.init(x, task.layout, generator=generators(seeds, "optimizer"))


#: Learned rules are stepped over chunks of instances holding at most this many coordinates: their
#: per-coordinate work gains nothing from larger batches, and on CPUs a whole population's LSTM
#: state falls out of cache (10 seeds of L2O-DM on mlp-orig ran 2.5x slower in one piece).
CHUNK_COORDINATES = 16_384
#: The same for rules whose LSTM runs the fused cell (:mod:`l2o.rules.fused_lstm`), which tiles the
#: coordinates itself: one call for the population was 1.3x faster than chunks of 16,384 for 10
#: seeds of L2O-DM on mlp-orig (docs/performance.md), so only very large populations are split.
FUSED_CHUNK_COORDINATES = 1 << 22


def chunk_coordinates(rule: Rule) -> int:
    """How many coordinates :func:`evaluate` steps ``rule`` over at once."""
    from l2o.rules import fused_lstm
    from l2o.rules.lstm import LSTMLayer

    modules = rule.modules() if isinstance(rule, torch.nn.Module) else ()
    if fused_lstm.USE_FUSED and any(isinstance(m, LSTMLayer) for m in modules):
        return FUSED_CHUNK_COORDINATES
    return CHUNK_COORDINATES


def chunked(step: Callable, chunk: int) -> Callable:
    """``step(grad, state)`` applied to slices of ``chunk`` instances and concatenated.

    Every tensor of the state whose first dimension is the population size is sliced; other
    leaves are passed through unchanged."""

    def run(grad: torch.Tensor, state: Any):
        n = grad.shape[0]
        if chunk >= n:
            return step(grad, state)
        leaves, spec = tree_flatten(state)
        sliced = [isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n for v in leaves]
        deltas, new_leaves = [], []
        for i in range(0, n, chunk):
            part = [v[i : i + chunk] if s else v for v, s in zip(leaves, sliced, strict=True)]
            delta, new = step(grad[i : i + chunk], tree_unflatten(part, spec))
            deltas.append(delta)
            new_leaves.append(tree_flatten(new)[0])
        merged = [
            torch.cat(vals) if s else vals[0]
            for vals, s in zip(zip(*new_leaves, strict=True), sliced, strict=True)
        ]
        return torch.cat(deltas), tree_unflatten(merged, spec)

    return run


def evaluate(
    rule: Rule,
    task: Task,
    steps: int,
    seeds: Sequence[int] = (0,),
    *,
    split: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    callback_every: int = 50,
    compile: bool = False,
) -> EvalResult:
    """Run ``rule`` on ``len(seeds)`` instances of ``task`` for ``steps`` steps, as one population.

    Args:
        rule: any :class:`~l2o.rules.base.Rule` (learned modules are moved to ``device``).
        task: the optimizee.
        steps: number of updates.
        seeds: one instance per seed; results do not depend on which other seeds run alongside.
        split: data split of the trajectories (default: the task's ``eval_split``, the test split
            for the paper's tasks, as in the original).
        device, dtype: where and in which precision to run.
        callback: called as ``callback(t, losses_t)`` every ``callback_every`` steps (progress).
        compile: ``torch.compile`` the rule's step (learned rules; eager fallback on failure).

    Returns:
        An :class:`EvalResult`. Ctrl-C stops early and returns the steps completed so far with
        ``interrupted=True``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("give at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    device = torch.device(device)
    split = split or task.eval_split
    if isinstance(rule, torch.nn.Module):
        rule.to(device=device, dtype=dtype)
    x = task.init(seeds, device=device, dtype=dtype)
    stream = task.stream(seeds, split, device=device)
    state = init_rule_state(rule, x, task, seeds)
    step = rule.step
    if isinstance(rule, torch.nn.Module):
        step = CompiledStep(rule.step) if compile else rule.step
        step = chunked(step, max(1, chunk_coordinates(rule) // task.num_params))
    record = torch.empty(steps, len(seeds), dtype=torch.float64, device=device)
    initial = None
    done = 0
    interrupted = False
    start = time.perf_counter()
    try:
        with torch.enable_grad():
            for t in range(steps + 1):
                x = x.detach().requires_grad_(True)
                loss = task.loss(x, stream.next())
                if t == 0:
                    initial = loss.detach().double().cpu().numpy()
                else:
                    record[t - 1] = loss.detach()
                    done = t
                    if callback is not None and (t % callback_every == 0 or t == steps):
                        callback(t, record[t - 1])
                if t == steps:
                    break
                (grad,) = torch.autograd.grad(loss.sum(), x)
                with torch.no_grad():
                    delta, state = step(grad, state)
                    x = x.detach() + delta
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.perf_counter() - start
    losses = record[:done].T.cpu().numpy()
    return EvalResult(
        rule=getattr(rule, "name", type(rule).__name__),
        hyperparameters=rule.hyperparameters(),
        task=task.name,
        task_options=task.options(),
        split=split,
        seeds=seeds,
        losses=losses,
        initial_losses=initial if initial is not None else np.full(len(seeds), np.nan),
        seconds=seconds,
        device=str(device),
        steps_requested=steps,
        interrupted=interrupted,
    )
