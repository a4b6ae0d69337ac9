"""The one registry of rule families: name -> analytic factory or learned-rule class.

Everything that turns a family name into a rule goes through here: checkpoint cards
(:func:`l2o.checkpoint.build_rule`, key ``model``), the authors' ``paper:*`` weights
(:mod:`l2o.rules.paper`), training configs (``TrainConfig.model``), :func:`l2o.load_rule` and the
CLI. Adding a learned optimizer is one file (a :class:`~l2o.rules.base.LearnedRule` subclass) plus
its class in :data:`LEARNED_RULES` below (or, from outside the package, one
:func:`register_rule` call); a recipe in :mod:`l2o.training.recipes` makes it trainable by name.
"""

from __future__ import annotations

from typing import Any

from l2o.rules.analytic import ANALYTIC_RULES
from l2o.rules.base import LearnedRule
from l2o.rules.dm import DMRule
from l2o.rules.mlp_lopt import MLPLOptRule
from l2o.rules.rnnprop import RNNpropRule
from l2o.rules.scale import ScaleRule

#: Learned families: ``rule.name`` (the checkpoint card's ``model``) -> class.
LEARNED_RULES: dict[str, type[LearnedRule]] = {
    cls.name: cls for cls in (DMRule, RNNpropRule, ScaleRule, MLPLOptRule)
}


def register_rule(cls: type[LearnedRule]) -> type[LearnedRule]:
    """Add a learned family (usable as a class decorator); its ``name`` must be new.

    Raises:
        ValueError: if the name is empty, taken by another class, or an analytic rule's.
    """
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` (its family name)")
    if name in ANALYTIC_RULES or LEARNED_RULES.get(name, cls) is not cls:
        raise ValueError(f"rule family {name!r} is already registered; choose another name")
    LEARNED_RULES[name] = cls
    return cls


def rule_families() -> list[str]:
    """Every family name: the analytic rules, then the learned ones."""
    return [*ANALYTIC_RULES, *LEARNED_RULES]


def learned_rule_class(name: str) -> type[LearnedRule]:
    """The class of learned family ``name``.

    Raises:
        ValueError: for an unknown name (listing the known ones).
    """
    if name not in LEARNED_RULES:
        raise ValueError(f"unknown learned rule family {name!r}; known: {', '.join(LEARNED_RULES)}")
    return LEARNED_RULES[name]


def build_learned_rule(name: str, hyperparameters: dict[str, Any] | None = None) -> LearnedRule:
    """An untrained rule of family ``name``, from a ``hyperparameters()`` dict if given."""
    cls = learned_rule_class(name)
    return cls.from_hyperparameters(hyperparameters) if hyperparameters else cls()
