"""Training configurations shared by the training tests: small enough to run in seconds."""

from __future__ import annotations

from l2o.training import TrainConfig, get_recipe


def quick_config(recipe: str, **settings) -> TrainConfig:
    """``recipe`` at the demo budget on the quadratic task, eager, with ``settings`` replacing
    any other field."""
    return get_recipe(recipe).config("demo", **{"task": "quadratic", "compile": False, **settings})


def tiny_config(**overrides) -> TrainConfig:
    """The ``dm`` recipe with a 40-step horizon, 4 epochs, validation every 2 epochs on 3 runs.
    ``overrides`` replace any field."""
    settings = dict(horizon=40, num_epochs=4, evaluation_period=2, evaluation_epochs=3)
    return quick_config("dm", **{**settings, **overrides})
