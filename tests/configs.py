"""Training configurations shared by the training tests: small enough to run in seconds."""

from __future__ import annotations

from l2o.training import TrainConfig, get_recipe


def tiny_config(**overrides) -> TrainConfig:
    """The ``dm`` recipe on the quadratic task: a 40-step horizon, 4 epochs, validation every
    2 epochs on 3 runs, eager. ``overrides`` replace any field."""
    values = dict(
        task="quadratic",
        horizon=40,
        num_epochs=4,
        evaluation_period=2,
        evaluation_epochs=3,
        compile=False,
    )
    values.update(overrides)
    return get_recipe("dm").config("demo", **values)
