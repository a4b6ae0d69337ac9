"""MNIST multi-layer perceptrons: MLP-orig, MLP-ReLU and MLP-deeper (docs/method.md 2.1).

784 -> hidden -> 10 with linear logits and mean softmax cross-entropy over a batch of 128. All
weights and biases start from N(0, 0.01^2) (the original's initialiser for every tensor).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from l2o.layout import Layout
from l2o.tasks.base import ParamInit
from l2o.tasks.datasets import ImageClassificationTask

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}


class MLPTask(ImageClassificationTask):
    """A population of MNIST MLPs evaluated with batched matmuls.

    Args:
        name: registry name.
        hidden: hidden layer widths, e.g. ``(20,)``.
        activation: ``sigmoid`` (MLP-orig), ``relu`` (MLP-ReLU) or ``tanh``.
        init_std: std of the N(0, std^2) initialiser of every tensor (0.01 in the paper; L2O-Scale
            meta-trains from 1.0, docs/method.md 2.2).
        batch_size: minibatch size (128).
        sampling: ``replacement`` (L2O-DM/RNNprop) or ``epoch`` (L2O-Scale).
    """

    def __init__(
        self,
        name: str = "mlp-orig",
        hidden: Sequence[int] = (20,),
        activation: str = "sigmoid",
        init_std: float = 0.01,
        batch_size: int = 128,
        sampling: str = "replacement",
        description: str = "",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        self.name = name
        self.dataset = "mnist"
        self.hidden = tuple(hidden)
        self.activation = activation
        self.init_std = init_std
        self.batch_size = batch_size
        self.sampling = sampling
        self.description = description
        widths = (784, *self.hidden, 10)
        shapes = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
            shapes += [(f"linear_{i}/w", (fan_in, fan_out)), (f"linear_{i}/b", (fan_out,))]
        self.layout = Layout.from_shapes(shapes)

    def param_inits(self) -> dict[str, ParamInit]:
        return {name: ParamInit("normal", self.init_std) for name in self.layout.names}

    def options(self) -> dict:
        return {
            "hidden": list(self.hidden),
            "activation": self.activation,
            "init_std": self.init_std,
            "batch_size": self.batch_size,
            "sampling": self.sampling,
        }

    def logits(self, x: Tensor, images: Tensor) -> Tensor:
        params = self.layout.unflatten(x)
        h = images.flatten(2).to(x.dtype)  # [n, B, 784]
        depth = len(self.hidden) + 1
        act = ACTIVATIONS[self.activation]
        for i in range(depth):
            h = torch.baddbmm(params[f"linear_{i}/b"].unsqueeze(1), h, params[f"linear_{i}/w"])
            if i < depth - 1:
                h = act(h)
        return h
