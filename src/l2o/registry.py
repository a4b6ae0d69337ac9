"""Resolve a rule name given on the command line or to :class:`l2o.LearnedOptimizer`.

``adam`` / ``rmsprop`` / ``sgd`` / ``nag`` are the analytic rules; ``paper:<name>`` loads the
authors' published weights; the name of a bundled optimizer (``l2o pretrained``; e.g.
``dm-cl-il``) loads the checkpoint shipped in the package; anything else is read as a checkpoint
path. Family names come from the one registry, :mod:`l2o.rules.registry`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from l2o.rules.analytic import get_analytic_rule
from l2o.rules.registry import ANALYTIC_RULES, LEARNED_RULES


def _warn_if_it_always_diverged(name: str, card: dict[str, Any]) -> None:
    """A bundled optimizer that diverged on every task of its card is shipped for reproducing the
    paper's curves, not for use: say so whenever it is loaded."""
    evaluation = card.get("evaluation") or {}
    if evaluation and all(r.get("final_ln_loss") is None for r in evaluation.values()):
        warnings.warn(
            f"the bundled optimizer {name!r} diverged on every task it was evaluated on "
            f"({', '.join(evaluation)}); its card says where it fails (`l2o pretrained`)",
            stacklevel=3,
        )


def load_rule(spec: str, **hparams: Any):
    """Build the rule named by ``spec``; ``hparams`` (e.g. ``lr``) apply to analytic rules only."""
    if spec in ANALYTIC_RULES:
        return get_analytic_rule(spec, **hparams)
    if spec.startswith("paper:"):
        from l2o.rules.paper import load_paper_rule

        return load_paper_rule(spec)
    from l2o.bundled import bundled_names, bundled_path

    if spec in bundled_names():
        from l2o.checkpoint import load_rule_checkpoint

        rule = load_rule_checkpoint(bundled_path(spec))
        _warn_if_it_always_diverged(spec, rule.card)
        return rule
    path = Path(spec)
    if path.exists():
        from l2o.checkpoint import load_rule_checkpoint

        return load_rule_checkpoint(path)
    if spec in LEARNED_RULES:
        raise ValueError(
            f"{spec!r} is a learned rule family, not trained weights: pass a checkpoint path, a "
            f"bundled optimizer or a paper:<name> checkpoint (`l2o pretrained` lists them), or "
            f"train one (`l2o train {spec}` where a recipe of that name exists)"
        )
    raise ValueError(
        f"unknown rule {spec!r}: use one of {', '.join(ANALYTIC_RULES)}, a bundled optimizer "
        "or a paper:<name> checkpoint (`l2o pretrained` lists them), or the path of a "
        "checkpoint file"
    )
