"""Learned optimizers meta-trained by this project and shipped inside the package.

Each is a checkpoint ``pretrained/ours/<name>.safetensors`` (weights plus its card: recipe,
budget, training wall-clock, evaluation results and known failures), loadable by name:
``l2o evaluate dm-cl-il ...``, ``l2o.LearnedOptimizer(params, "dm-cl-il")``, ``l2o.load_rule``.
They are built by ``benchmarks/bundle_pretrained.py`` from finished training runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BUNDLED_DIR = Path(__file__).parent / "pretrained" / "ours"


def bundled_names() -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.safetensors"))


def bundled_path(name: str) -> Path:
    path = BUNDLED_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise ValueError(
            f"no bundled optimizer {name!r}; available: {', '.join(bundled_names()) or 'none'}"
        )
    return path


def bundled_cards() -> dict[str, dict[str, Any]]:
    """``{name: card}`` of every shipped checkpoint."""
    from l2o.checkpoint import read_card

    return {name: read_card(bundled_path(name)) for name in bundled_names()}
