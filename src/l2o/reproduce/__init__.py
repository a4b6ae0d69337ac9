"""Reproducing the paper's figures: what each needs, running it, and the report."""

from l2o.reproduce.claims import Claim, Verdict, judge
from l2o.reproduce.paper import FIGURES, PAPER_VALUES, CurveSpec, Figure
from l2o.reproduce.runner import EVAL_SIZES, Plan, make_plan, run_plan, write_report

__all__ = [
    "EVAL_SIZES",
    "FIGURES",
    "PAPER_VALUES",
    "Claim",
    "CurveSpec",
    "Figure",
    "Plan",
    "Verdict",
    "judge",
    "make_plan",
    "run_plan",
    "write_report",
]
