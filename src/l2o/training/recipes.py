"""Named training recipes at three budgets (docs/method.md sections 0 and 3.1).

``paper`` keeps the original epoch counts. ``cpu`` is the paper's training procedure cut to what
one 2-core CPU does in about two hours per training: the paper's validation cadence in every
stage, its 20 validation runs, its imitation ratios, the curriculum cut at horizon 1,000 (the
paper's goes to 3,000) and an epoch cap (the paper's is 10,000). ``demo`` cuts much more (minutes).
Each budget's departures from the paper are data (:meth:`Recipe.deviations`): ``l2o train --list``
prints them and every checkpoint card carries them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from l2o.training.config import TrainConfig
from l2o.training.curriculum import DM_HORIZONS, SCALE_HORIZONS

BUDGETS = ("demo", "cpu", "paper")

#: L2O-Scale's meta learning rate in the original code (RMSProp, docs/method.md 3.2 and 8.1 item 9).
PAPER_SCALE_META_LR = 1e-6
#: A meta learning rate at which backpropagation moves L2O-Scale's weights within a cpu budget
#: (docs/scale.md's sweep); the ``scale`` recipes used it before 2026-11-29.
FAST_SCALE_META_LR = 3e-3
#: The ``scale`` baseline's meta learning rate: the original's. Measured (docs/scale.md, "Which
#: meta-training holds past its horizon"): trained at 3e-3 with the state reset every epoch it
#: diverges on every seed past ~1,000 steps; the original's settings never diverge.
SCALE_META_LR = PAPER_SCALE_META_LR
#: L2O-DM's imitation probability per curriculum stage (docs/method.md 5.1: none in stage 0).
DM_IMITATION_RATIOS = [0.0, 0.1, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]

_SCALE_SETTINGS: dict[str, Any] = {
    "model": "scale",
    "horizon": 100,
    "unroll_length": 20,
    "evaluation_epochs": 5,
    "meta_optimizer": "rmsprop",
    "meta_lr": SCALE_META_LR,
    "rule_state": "carry",
    "nonfinite": "zero",
    "grad_clip_value": 1e4,
    "objective": "log-normalized",
    "objective_subset": 10_000,
    "validation_score": "final-objective",
    "task_options": {"init_std": 1.0, "sampling": "epoch"},
}
#: L2O-Scale with the paper's techniques: its longer schedule, imitation in 10% of the
#: meta-iterations with the meta-optimizer shared and the 1/T weights (docs/method.md 4.1, 5.2).
#: Their meta learning rate and rule state are still the ones the recipes had before the baseline
#: went back to the original's (docs/scale.md): at 1e-6 the techniques have nothing to act on.
_SCALE_CL_SETTINGS: dict[str, Any] = {
    **_SCALE_SETTINGS,
    "meta_lr": FAST_SCALE_META_LR,
    "rule_state": "reset",
    "curriculum": list(SCALE_HORIZONS),
    "imitation_ratios": [0.1],
    "imitation_optimizer": "shared",
    "imitation_time_weight": "mean",
}
#: The cpu budget's curriculum: the paper's L2O-DM/RNNprop horizons up to 1,000 steps. A 1,000-step
#: epoch of L2O-DM meta-training takes about 18 s on one core (56 optimizee steps/s, measured
#: 2026-11-29); stages 0-2 of at least 3 validations x 100 epochs already take about 70 minutes.
CPU_CURRICULUM = [100, 200, 500, 1000]
#: The cpu budget's epoch cap for L2O-DM (all four recipes alike, as the paper's 10,000): with
#: stages 0-2 at their minimum, stage 3 gets 100 epochs and the run about 2 hours on one core.
CPU_DM_EPOCHS = 1_000
#: The cpu budget's epoch cap for RNNprop-CL-IL: its curriculum normally finishes long before
#: (all four stages in ~130 epochs); 300 epochs all spent in the last stage would take ~2 hours.
CPU_RNNPROP_CL_EPOCHS = 300
_DM_CPU = {"curriculum": CPU_CURRICULUM}
_RNNPROP_CPU = {"curriculum": CPU_CURRICULUM}
_DM_DEMO = {"curriculum": [100, 200], "evaluation_epochs": 4}
# At the demo budget there is no room for a 300-epoch stage 0, so L2O-DM-CL-IL imitates from
# stage 0 on (p = 0.1, stage 1's ratio): imitation is what lets it leave the plateau in minutes.
_DM_CL_IL_DEMO = {**_DM_DEMO, "imitation_ratios": [0.1, 0.1]}
_SCALE_CPU = {"curriculum": [100, 200, 500]}  # a 500-step L2O-Scale epoch takes ~15 s
_SCALE_DEMO = {"curriculum": [100, 200], "evaluation_epochs": 3}
_SCALE_CL_BUDGETS = {"demo": (60, 5), "cpu": (300, 10), "paper": (100, 1)}
_SCALE_CL_BUDGET_SETTINGS = {"demo": _SCALE_DEMO, "cpu": _SCALE_CPU}


@dataclass(frozen=True)
class Recipe:
    """A recipe: shared settings plus, per budget, ``(num_epochs, evaluation_period)`` and any
    further settings that budget changes (``budget_settings``, e.g. a shorter curriculum).
    ``notes``: how the recipe departs from the paper at every budget (none for most)."""

    name: str
    description: str
    settings: dict[str, Any]
    budgets: dict[str, tuple[int, int]]
    notes: str = ""
    budget_settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def config(self, budget: str = "cpu", **overrides: Any) -> TrainConfig:
        if budget not in self.budgets:
            raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        epochs, period = self.budgets[budget]
        values = {
            "recipe": self.name,
            "budget": budget,
            **self.settings,
            **self.budget_settings.get(budget, {}),
            "num_epochs": epochs,
            "evaluation_period": period,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_flat(**values)

    def deviations(self, budget: str | TrainConfig) -> list[str]:
        """How this recipe at ``budget`` (or a config made from it, with overrides) departs from
        the paper's procedure, in words: every setting that differs from the ``paper`` budget's
        (not the run's seed, device or compilation), then the recipe's own ``notes``."""
        config = self.config(budget) if isinstance(budget, str) else budget
        mine, paper = config.to_dict(), self.config("paper").to_dict()
        out = [
            _describe_change(key, mine.get(key), paper.get(key))
            for key in sorted(set(mine) | set(paper))
            if key not in _RUN_KEYS and mine.get(key) != paper.get(key)
        ]
        return out + ([self.notes] if self.notes else [])


#: Settings of a run, not of the procedure: never a deviation from the paper.
_RUN_KEYS = ("recipe", "budget", "seed", "device", "compile")


def _describe_change(key: str, value: Any, paper: Any) -> str:
    if key == "num_epochs":
        return f"at most {value:,} epochs (paper {paper:,})"
    if key == "evaluation_period":
        return f"validation every {value} epochs (paper {paper})"
    if key == "evaluation_epochs":
        return f"validation on {value} runs (paper {paper})"
    if key == "imitation_ratios":
        return f"imitation ratios {_ratios(value)} per stage (paper {_ratios(paper)})"
    if key == "curriculum" and value and paper and value == paper[: len(value)]:
        return (
            f"curriculum cut at horizon {value[-1]:,} (paper: {len(paper)} stages to {paper[-1]:,})"
        )
    return f"{key} {value} (paper {paper})"


def _ratios(values: list[float]) -> str:
    return "/".join(f"{v:g}" for v in values) or "none"


RECIPES: dict[str, Recipe] = {
    "dm": Recipe(
        "dm",
        "L2O-DM baseline (Andrychowicz et al. 2016): 100-step horizon, Adam 1e-3",
        {"model": "dm", "horizon": 100, "evaluation_epochs": 20},
        {"demo": (150, 25), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
    ),
    "dm-aug": Recipe(
        "dm-aug",
        "L2O-DM-AUG: the baseline with a 500-step horizon (the original README's definition)",
        {"model": "dm", "horizon": 500, "evaluation_epochs": 20},
        {"demo": (12, 6), "cpu": (400, 100), "paper": (5_000, 100)},
    ),
    "rnnprop": Recipe(
        "rnnprop",
        "RNNprop (Lv et al. 2017) as re-implemented by the paper: 100-step horizon",
        {"model": "rnnprop", "horizon": 100, "evaluation_epochs": 20},
        {"demo": (100, 10), "cpu": (100, 10), "paper": (100, 10)},
    ),
    "scale": Recipe(
        "scale",
        "L2O-Scale (Wichrowska et al. 2017) as meta-trained by the paper: hierarchical RNN, "
        "log-normalized objective, RMSProp",
        _SCALE_SETTINGS,
        {"demo": (60, 10), "cpu": (100, 1), "paper": (100, 1)},
    ),
    "dm-cl": Recipe(
        "dm-cl",
        "L2O-DM with the validation-gated curriculum (horizons 100 -> 3,000), no imitation",
        {"model": "dm", "curriculum": list(DM_HORIZONS), "evaluation_epochs": 20},
        {"demo": (150, 10), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
        budget_settings={"demo": _DM_DEMO, "cpu": _DM_CPU},
    ),
    "dm-il": Recipe(
        "dm-il",
        "L2O-DM with off-policy imitation of Adam (lr 0.01) in 30% of the epochs, 100-step "
        "horizon, no curriculum",
        {"model": "dm", "horizon": 100, "evaluation_epochs": 20, "imitation_ratios": [0.3]},
        {"demo": (150, 25), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
    ),
    "dm-cl-il": Recipe(
        "dm-cl-il",
        "L2O-DM-CL-IL, the paper's strongest baseline: curriculum plus imitation of Adam "
        "(0, 0.1, then 0.3 of the epochs per stage)",
        {
            "model": "dm",
            "curriculum": list(DM_HORIZONS),
            "evaluation_epochs": 20,
            "imitation_ratios": DM_IMITATION_RATIOS,
        },
        {"demo": (150, 10), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
        budget_settings={"demo": _DM_CL_IL_DEMO, "cpu": _DM_CPU},
    ),
    "rnnprop-cl-il": Recipe(
        "rnnprop-cl-il",
        "RNNprop with curriculum and imitation of Adam in 30% of the epochs",
        {
            "model": "rnnprop",
            "curriculum": list(DM_HORIZONS),
            "evaluation_epochs": 20,
            "imitation_ratios": [0.3],
        },
        {"demo": (150, 10), "cpu": (CPU_RNNPROP_CL_EPOCHS, 10), "paper": (10_000, 10)},
        budget_settings={"demo": _DM_DEMO, "cpu": _RNNPROP_CPU},
    ),
    "scale-cl-il": Recipe(
        "scale-cl-il",
        "L2O-Scale with curriculum (100 -> 5,000) and imitation of Adam in 10% of the "
        "meta-iterations",
        _SCALE_CL_SETTINGS,
        _SCALE_CL_BUDGETS,
        budget_settings=_SCALE_CL_BUDGET_SETTINGS,
        notes="meta learning rate 3e-3 and the rule state reset every epoch, at every budget "
        "(the original: 1e-6, carried; docs/scale.md)",
    ),
    "scale-cl-self": Recipe(
        "scale-cl-self",
        "L2O-Scale with curriculum and self-improving: it imitates its own best rule of the "
        "previous stage",
        {**_SCALE_CL_SETTINGS, "teachers": ["self"]},
        _SCALE_CL_BUDGETS,
        budget_settings=_SCALE_CL_BUDGET_SETTINGS,
        notes="meta learning rate 3e-3 and the rule state reset every epoch, at every budget "
        "(the original: 1e-6, carried; docs/scale.md)",
    ),
    "mlp-lopt": Recipe(
        "mlp-lopt",
        "MLP-LOpt (Metz et al. 2022, learned_optimization's per-parameter MLP) trained like the "
        "L2O-DM baseline: 100-step horizon, Adam 1e-3",
        {"model": "mlp-lopt", "horizon": 100, "evaluation_epochs": 20, "meta_lr": 1e-3},
        {"demo": (150, 25), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
        notes="not a family of Chen et al. 2020; the settings are the dm recipe's. Upstream "
        "meta-trains it with truncated ES; here it is backpropagation through unrolls.",
    ),
    "mlp-lopt-cl-il": Recipe(
        "mlp-lopt-cl-il",
        "MLP-LOpt with the paper's techniques as for L2O-DM-CL-IL: curriculum plus imitation "
        "of Adam (0, 0.1, then 0.3 of the epochs per stage)",
        {
            "model": "mlp-lopt",
            "curriculum": list(DM_HORIZONS),
            "evaluation_epochs": 20,
            "meta_lr": 1e-3,
            "imitation_ratios": DM_IMITATION_RATIOS,
        },
        {"demo": (150, 10), "cpu": (CPU_DM_EPOCHS, 100), "paper": (10_000, 100)},
        budget_settings={"demo": _DM_CL_IL_DEMO, "cpu": _DM_CPU},
        notes="not a family of Chen et al. 2020: the dm-cl-il recipe's settings. Under "
        "imitation the rule's parameter feature follows its own steps, not the teacher's.",
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
