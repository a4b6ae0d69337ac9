"""The paper's figures and the values read from them (docs/method.md section 7).

Each figure is a set of curves (learned optimizers, each a training recipe, or a curve we cannot
reproduce) drawn on a set of tasks. ``PAPER_VALUES`` holds ln(training loss) at 10,000 steps as
read from the published figures (medians over steps 9,700-10,000, tolerance about 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from l2o.reproduce.claims import Claim

TASKS = ("mlp-orig", "mlp-relu", "mlp-deeper", "conv-mnist", "conv-cifar")
PAPER_STEPS = 10_000


def _row(*values: float) -> dict[str, float]:
    return dict(zip(TASKS, values, strict=True))


#: ln(loss) at 10,000 steps, read from Figures 2, 3 and 5 (docs/method.md section 7).
PAPER_VALUES: dict[str, dict[str, float]] = {
    "L2O-DM": _row(-0.1, 1.45, 0.05, 1.72, 0.834),
    "L2O-DM-AUG": _row(-3.06, -0.87, -0.80, -0.95, 0.83),
    "L2O-DM-IL": _row(-3.2, -1.07, -2.9, -2.1, 0.70),
    "L2O-DM-CL": _row(-5.6, -4.0, -3.9, 0.27, 0.765),
    "L2O-DM-CL-IL": _row(-10.8, -7.1, -7.2, -4.9, 0.33),
    "RNNprop": _row(-5.5, -3.6, -4.3, 0.35, 0.834),
    "RNNprop-CL-IL": _row(-10.4, -5.6, -7.1, -6.7, 0.00),
    "L2O-Scale": _row(-1.0, -2.9, -0.95, -0.37, 0.76),
    "L2O-Scale-CL-IL": _row(-1.8, -3.9, -1.95, -1.55, 0.42),
    "L2O-Scale-Meta": _row(-0.42, -2.5, -2.2, -2.7, 0.67),
    # Figure 6 (Conv-MNIST only; presumably L2O-Scale, docs/method.md 5.3).
    "Baseline": {"conv-mnist": -0.38},
    "Self Improving": {"conv-mnist": -0.85},
    "Imitation Learning": {"conv-mnist": -1.59},
}

#: Values that are bounds rather than readings.
PAPER_NOTES: dict[tuple[str, str], str] = {
    ("RNNprop-CL-IL", "conv-mnist"): "at most -6.7 (crosses the figure's -7 floor)",
}


@dataclass(frozen=True)
class CurveSpec:
    """One learned optimizer of a figure.

    Attributes:
        label: the paper's name of the curve (a key of ``PAPER_VALUES``).
        recipe: the training recipe that makes it, or ``None`` if we cannot reproduce it.
        paper_weights: the authors' trained weights for it (``paper:*``), if published.
        reason: why it is not reproduced (when ``recipe`` is ``None``).
    """

    label: str
    recipe: str | None
    paper_weights: str | None = None
    reason: str = ""


ANALYTIC_BASELINES = ("adam", "rmsprop", "sgd", "nag")


@dataclass(frozen=True)
class Figure:
    """A figure: learned curves and grid-tuned analytic baselines on some tasks."""

    name: str
    title: str
    curves: tuple[CurveSpec, ...]
    tasks: tuple[str, ...] = TASKS
    baselines: tuple[str, ...] = ANALYTIC_BASELINES
    claims: tuple[Claim, ...] = ()  # the paper's ordering of its curves, judged in the report


DM = CurveSpec("L2O-DM", "dm", "paper:dm")
DM_AUG = CurveSpec("L2O-DM-AUG", "dm-aug", "paper:dm-aug")
DM_IL = CurveSpec("L2O-DM-IL", "dm-il", "paper:dm-il")
DM_CL = CurveSpec("L2O-DM-CL", "dm-cl", "paper:dm-cl")
DM_CL_IL = CurveSpec("L2O-DM-CL-IL", "dm-cl-il", "paper:dm-cl-il")
RNNPROP = CurveSpec("RNNprop", "rnnprop", "paper:rnnprop")
RNNPROP_CL_IL = CurveSpec("RNNprop-CL-IL", "rnnprop-cl-il", "paper:rnnprop-cl-il")
SCALE = CurveSpec("L2O-Scale", "scale")
SCALE_CL_IL = CurveSpec("L2O-Scale-CL-IL", "scale-cl-il")
SCALE_META = CurveSpec(
    "L2O-Scale-Meta",
    None,
    reason="L2O-Scale meta-trained on a broad problem set; the project has no task "
    "distributions yet (docs/method.md 0 item 6)",
)

#: The paper's ordering (Section 4, Figures 3 and 5): each technique alone improves L2O-DM.
CL_HELPS = Claim("L2O-DM-CL", "L2O-DM", "the curriculum alone improves L2O-DM")
IL_HELPS = Claim("L2O-DM-IL", "L2O-DM", "imitation alone improves L2O-DM")
#: Figure 5's control: L2O-DM-AUG trains on 500-step unrolls throughout (docs/method.md 0.5), so
#: the curriculum's gain is not only longer unrolls (the paper: -5.6 against -3.06 on mlp-orig,
#: -4.0 against -0.87 on mlp-relu; section 7).
CL_BEATS_AUG = Claim(
    "L2O-DM-CL", "L2O-DM-AUG", "the curriculum beats training on long unrolls alone (AUG)"
)

FIGURES: dict[str, Figure] = {
    "fig2": Figure(
        "fig2",
        "Figure 2: L2O-DM-CL-IL against L2O-DM, RNNprop and L2O-Scale",
        (DM_CL_IL, DM, RNNPROP, SCALE, SCALE_META),
    ),
    "fig3": Figure(
        "fig3",
        "Figure 3: each model with and without CL + IL",
        (DM, DM_CL_IL, RNNPROP, RNNPROP_CL_IL, SCALE, SCALE_CL_IL),
    ),
    "fig5": Figure(
        "fig5",
        "Figure 5: the L2O-DM ablation",
        (DM, DM_AUG, DM_IL, DM_CL),
        claims=(CL_HELPS, IL_HELPS, CL_BEATS_AUG),
    ),
    "fig6": Figure(
        "fig6",
        "Figure 6: imitation learning against self-improving (L2O-Scale, Conv-MNIST)",
        (
            CurveSpec("Baseline", "scale"),
            CurveSpec("Self Improving", "scale-cl-self"),
            CurveSpec("Imitation Learning", "scale-cl-il"),
        ),
        tasks=("conv-mnist",),
    ),
    # Not a figure of the paper: its claim in one place (docs/results.md), the curves of
    # Figures 2, 3 and 5 whose recipes the cpu budget trains, on the two tasks its text reports.
    "techniques": Figure(
        "techniques",
        "Curriculum (CL) and imitation (IL): L2O-DM and RNNprop with and without them",
        (DM, DM_IL, DM_CL, DM_CL_IL, RNNPROP, RNNPROP_CL_IL),
        tasks=("mlp-orig", "mlp-relu"),
        claims=(
            CL_HELPS,
            IL_HELPS,
            Claim("L2O-DM-CL-IL", "L2O-DM-CL", "CL + IL beats CL alone"),
            Claim("L2O-DM-CL-IL", "L2O-DM-IL", "CL + IL beats IL alone"),
            Claim("L2O-DM-CL-IL", "L2O-DM", "CL + IL beats plain L2O-DM"),
            Claim("RNNprop-CL-IL", "RNNprop", "CL + IL make RNNprop better"),
        ),
    ),
}


#: The demo (``make demo``): the paper's point at a budget of minutes. L2O-DM with and without
#: CL + IL shows what the techniques do; RNNprop-CL-IL, the strongest model at this budget (it
#: needs no plateau escape, docs/techniques.md), is the learned optimizer that competes with Adam.
DEMO = Figure(
    "demo",
    "Demo: L2O-DM with and without curriculum + imitation, RNNprop-CL-IL, beside Adam",
    (DM, DM_CL_IL, RNNPROP_CL_IL),
    tasks=("mlp-orig", "mlp-relu"),
    baselines=("adam",),
)


def paper_value_of_weights(weights: str, task: str) -> float | None:
    """The paper's 10,000-step value (docs/method.md section 7) of the curve the authors' checkpoint
    ``weights`` (e.g. ``"paper:dm-cl-il"``) was published for, on ``task``; ``None`` if unknown."""
    for fig in FIGURES.values():
        for curve in fig.curves:
            if curve.paper_weights == weights:
                return PAPER_VALUES.get(curve.label, {}).get(task)
    return None
