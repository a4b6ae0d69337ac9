"""Checkpoints: the released artefact (weights + card) and the resumable training state.

* A **rule checkpoint** (``best.safetensors``) holds the learned rule's weights as safetensors, a
  format that loads without executing code, with its JSON *card* embedded in the header metadata
  (key ``l2o_card``); the card is also written beside it as ``best.json`` for people to read.
* A **training checkpoint** (``train_state.pt``) additionally holds the meta-optimizer state, the
  epoch counter, the best score and the schedule state; it is read with
  ``torch.load(weights_only=True)``, which refuses to execute code.

Every write goes to a temp file that is renamed into place, so a kill never leaves half a file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from l2o.io import atomic_write_bytes, atomic_write_json

CARD_KEY = "l2o_card"
FORMAT = "l2o-rule-v1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt, or not an l2o checkpoint."""


def model_classes() -> dict[str, type]:
    """Model kind -> learned rule class (``rule.name`` is the kind): the registry's families."""
    from l2o.rules.registry import LEARNED_RULES

    return dict(LEARNED_RULES)


def build_rule(kind: str, hyperparameters: dict[str, Any] | None = None):
    """An untrained learned rule of ``kind`` built from its hyperparameters."""
    from l2o.rules.registry import LEARNED_RULES, build_learned_rule

    if kind not in LEARNED_RULES:
        raise CheckpointError(
            f"unknown model kind {kind!r}; known kinds: {', '.join(LEARNED_RULES)}"
        )
    return build_learned_rule(kind, hyperparameters)


def save_rule(path: Path, rule: torch.nn.Module, card: dict[str, Any]) -> None:
    """Write ``rule``'s weights with ``card`` (plus ``format``, ``model`` and hyperparameters)."""
    card = {
        "format": FORMAT,
        "model": rule.name,
        "hyperparameters": rule.hyperparameters(),
        **card,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in rule.state_dict().items()}
    data = st_save(tensors, metadata={CARD_KEY: json.dumps(card)})
    path = Path(path)
    atomic_write_bytes(path, data)
    atomic_write_json(path.with_suffix(".json"), card)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({err}); it may be truncated or "
            "corrupt: re-create it (re-run training or copy it again)"
        ) from err
    if CARD_KEY not in metadata:
        raise CheckpointError(
            f"{path} is a safetensors file but not an l2o checkpoint (no '{CARD_KEY}' card in "
            "its metadata); only files written by l2o (best.safetensors) can be loaded"
        )
    try:
        card = json.loads(metadata[CARD_KEY])
    except (TypeError, json.JSONDecodeError) as err:
        card = err
    if not isinstance(card, dict) or not isinstance(card.get("model"), str):
        raise CheckpointError(
            f"{path}: its '{CARD_KEY}' card is not a JSON object naming the model "
            f"({str(card)[:80]}); re-create it (re-run training or copy it again)"
        )
    return tensors, card


def read_card(path: Path) -> dict[str, Any]:
    """The card of a rule checkpoint."""
    return _read(path)[1]


def load_rule_checkpoint(path: Path, device: str | torch.device = "cpu"):
    """Rebuild the learned rule saved at ``path`` (weights loaded exactly)."""
    tensors, card = _read(path)
    try:
        rule = build_rule(card["model"], card.get("hyperparameters"))
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}; re-create it (re-run training)") from err
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise CheckpointError(
            f"{path}: its card's hyperparameters do not build a {card['model']!r} rule "
            f"({type(err).__name__}: {err}); re-create it (re-run training or copy it again)"
        ) from err
    try:
        rule.load_state_dict(tensors)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"{path}: weights do not match model {card.get('model')!r} ({detail}); "
            "re-create it (re-run training or copy it again)"
        ) from err
    rule.card = card
    return rule.to(device)


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable training state atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_training_state(path: Path) -> dict[str, Any]:
    """Read a training state written by :func:`save_training_state` (no code execution)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt pickles/zips
        raise CheckpointError(
            f"{path} is not a readable l2o training state ({type(err).__name__}: {err}); "
            "delete it to start the run afresh, or point --out at another directory"
        ) from err


__all__ = [
    "CheckpointError",
    "build_rule",
    "load_rule_checkpoint",
    "load_training_state",
    "read_card",
    "save_rule",
    "save_training_state",
]
