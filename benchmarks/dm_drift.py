"""How far a coordinatewise learned rule drifts when its gradient is (almost) zero.

Late in a long run most gradient coordinates of an MLP are tiny. L2O-DM's LogAndSign then
saturates (``log`` feature clamped at -1, ``sign`` feature ~0), so every such coordinate gets
the same step: the rule's *drift* ``delta(g = 0)``. The gradient at which the stationary step
changes sign (the *balance gradient*) is where the drift and the descent cancel: a rule cannot
push gradients much below it, so it sets a floor on how low the loss goes. This script feeds each
rule a constant gradient ``g`` for ``--steps`` steps from its initial state (long enough for the
LSTM state to settle) and records the step it then takes.

    python benchmarks/dm_drift.py --out benchmarks/results/dm_drift.json
    python benchmarks/dm_drift.py --rules paper:dm-cl paper:dm-cl-il dm-cl-il

It is a diagnostic of the weights, not a speed benchmark; it runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import l2o

#: The authors' five L2O-DM checkpoints and our bundled one. (RNNprop normalises its inputs by
#: running moments, so a constant gradient of any size looks the same to it: no drift to measure.)
DEFAULT_RULES = [
    "paper:dm",
    "paper:dm-aug",
    "paper:dm-il",
    "paper:dm-cl",
    "paper:dm-cl-il",
    "dm-cl-il",
]


def stationary_steps(rule, grads: torch.Tensor, steps: int) -> torch.Tensor:
    """The step ``rule`` takes after seeing each constant gradient in ``grads`` ``steps`` times."""
    x = torch.zeros(1, grads.numel())
    state = rule.init(x)
    delta = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(steps):
            delta, state = rule.step(grads[None], state)
    return delta[0]


def balance_gradient(grads: np.ndarray, deltas: np.ndarray) -> float | None:
    """The gradient where the stationary step crosses zero (linear interpolation between the
    two grid points around it, on the sorted grid); ``None`` if it never does."""
    order = np.argsort(grads)
    g, d = grads[order], deltas[order]
    for i in range(len(g) - 1):
        if d[i] == 0:
            return float(g[i])
        if d[i] * d[i + 1] < 0:
            return float(g[i] - d[i] * (g[i + 1] - g[i]) / (d[i + 1] - d[i]))
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="+", default=DEFAULT_RULES)
    ap.add_argument("--steps", type=int, default=300, help="constant-gradient steps per rule")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dm_drift.json"))
    args = ap.parse_args()

    mags = np.logspace(-8, -2, 25)
    grads = np.concatenate([-mags[::-1], [0.0], mags])
    results = {}
    print(f"{'rule':24s} {'drift delta(0)':>15s} {'balance g':>11s} {'delta(+1e-4)':>13s}")
    for spec in args.rules:
        rule = l2o.load_rule(spec)
        deltas = stationary_steps(rule, torch.tensor(grads, dtype=torch.float32), args.steps)
        deltas = deltas.double().numpy()
        drift = float(deltas[len(mags)])
        balance = balance_gradient(grads, deltas)
        at_1e4 = float(np.interp(1e-4, grads, deltas))
        results[spec] = {
            "drift": drift,
            "balance_gradient": balance,
            "grads": grads.tolist(),
            "deltas": deltas.tolist(),
        }
        shown = f"{balance:+.1e}" if balance is not None else "none"
        print(f"{spec:24s} {drift:+15.2e} {shown:>11s} {at_1e4:+13.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
