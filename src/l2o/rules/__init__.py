"""Optimizer rules: the shared interface, analytic baselines and learned optimizers."""

from l2o.rules.analytic import (
    ANALYTIC_RULES,
    AnalyticRule,
    AnalyticState,
    adam,
    get_analytic_rule,
    nag,
    rmsprop,
    sgd,
)
from l2o.rules.base import LearnedRule, Rule
from l2o.rules.dm import DMRule, DMState
from l2o.rules.mlp_lopt import MLPLOptRule, MLPLOptState
from l2o.rules.paper import PAPER_ATTRIBUTION, PAPER_CHECKPOINTS, load_paper_rule
from l2o.rules.registry import LEARNED_RULES, register_rule, rule_families
from l2o.rules.rnnprop import RNNpropRule, RNNpropState
from l2o.rules.scale import ScaleRule, ScaleState

__all__ = [
    "ANALYTIC_RULES",
    "LEARNED_RULES",
    "PAPER_ATTRIBUTION",
    "PAPER_CHECKPOINTS",
    "AnalyticRule",
    "AnalyticState",
    "DMRule",
    "DMState",
    "LearnedRule",
    "MLPLOptRule",
    "MLPLOptState",
    "RNNpropRule",
    "RNNpropState",
    "Rule",
    "ScaleRule",
    "ScaleState",
    "adam",
    "get_analytic_rule",
    "load_paper_rule",
    "nag",
    "register_rule",
    "rmsprop",
    "rule_families",
    "sgd",
]
