"""What the authors' published weights (``paper:*``) reach in this package's harness.

One data table, copied from the measurements in ``docs/results.md`` ("The authors' seven
checkpoints on the five tasks"), so that ``l2o pretrained`` can show beside the paper's figure
value what each file actually does here. Each cell is ``final_ln_loss`` (per seed: ln of the mean
loss over the last 100 steps) as mean, min and max over seeds, with the run's size. The commands
that produced them: ``l2o evaluate paper:NAME --task TASK --seeds S --steps N`` (results.md).
Update this table when results.md is re-measured.
"""

from __future__ import annotations

from typing import NamedTuple


class Measured(NamedTuple):
    """``final_ln_loss`` over ``seeds`` seeds after ``steps`` steps: mean, min and max."""

    mean: float
    min: float
    max: float
    seeds: int
    steps: int

    def run(self) -> str:
        """``"10x10k"``: seeds x steps."""
        steps = f"{self.steps // 1000}k" if self.steps % 1000 == 0 else str(self.steps)
        return f"{self.seeds}x{steps}"


#: ``{paper:name: {task: Measured}}``; a task missing from a row is not measured yet.
PAPER_WEIGHTS_MEASURED: dict[str, dict[str, Measured]] = {
    "paper:dm": {
        "mlp-orig": Measured(0.18, -0.09, 0.40, 3, 10000),
        "mlp-relu": Measured(1.16, 0.77, 1.48, 3, 10000),
        "mlp-deeper": Measured(-0.19, -0.48, 0.05, 3, 10000),
        "conv-cifar": Measured(0.85, 0.84, 0.85, 3, 3000),
    },
    "paper:dm-aug": {
        "mlp-orig": Measured(-3.24, -3.28, -3.22, 3, 10000),
        "mlp-relu": Measured(-1.15, -1.37, -0.93, 3, 10000),
        "mlp-deeper": Measured(-1.48, -2.84, 0.83, 3, 10000),
        "conv-cifar": Measured(0.58, 0.50, 0.62, 3, 3000),
    },
    "paper:dm-il": {
        "mlp-orig": Measured(-3.36, -3.51, -3.16, 3, 10000),
        "mlp-relu": Measured(-1.03, -1.17, -0.93, 3, 10000),
        "mlp-deeper": Measured(-2.40, -2.64, -2.18, 3, 10000),
        "conv-cifar": Measured(0.74, 0.63, 0.83, 3, 3000),
    },
    "paper:dm-cl": {
        "mlp-orig": Measured(-5.15, -6.12, -4.26, 3, 10000),
        "mlp-relu": Measured(-3.79, -3.92, -3.53, 3, 10000),
        "mlp-deeper": Measured(-4.42, -4.66, -4.26, 3, 10000),
        "conv-cifar": Measured(0.67, 0.56, 0.76, 3, 3000),
    },
    "paper:dm-cl-il": {
        "mlp-orig": Measured(-5.90, -6.58, -5.36, 10, 10000),
        "mlp-relu": Measured(-4.10, -4.41, -3.80, 10, 10000),
        "mlp-deeper": Measured(-4.67, -5.31, -4.04, 10, 10000),
        "conv-mnist": Measured(-5.62, -5.81, -5.41, 3, 3000),
        "conv-cifar": Measured(-0.10, -0.22, 0.04, 3, 3000),
    },
    "paper:rnnprop": {
        "mlp-orig": Measured(-10.69, -11.18, -10.16, 3, 10000),
        "mlp-relu": Measured(-6.22, -6.58, -6.00, 3, 10000),
        "mlp-deeper": Measured(-6.62, -7.32, -5.86, 3, 10000),
        "conv-cifar": Measured(0.51, 0.44, 0.55, 3, 3000),
    },
    "paper:rnnprop-cl-il": {
        "mlp-orig": Measured(-9.89, -11.51, -8.38, 10, 10000),
        "mlp-relu": Measured(-5.38, -6.49, -4.55, 10, 10000),
        "mlp-deeper": Measured(-6.44, -7.30, -5.33, 10, 10000),
        "conv-mnist": Measured(-5.66, -5.83, -5.41, 3, 3000),
        "conv-cifar": Measured(-0.26, -0.40, -0.14, 3, 3000),
    },
}

#: Adam at lr 0.01 on mlp-orig in the same harness, 10 seeds x 10,000 steps (results.md).
ADAM_MLP_ORIG = Measured(-6.11, -7.26, -1.70, 10, 10000)
