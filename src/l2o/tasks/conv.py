"""Conv-MNIST and Conv-CIFAR (docs/method.md 2.1), batched over a population with grouped
convolutions.

Two conv blocks (conv + bias -> BatchNorm -> ReLU -> 2x2 max-pool, all VALID) and a linear layer,
with the original's quirks as defaults and options: BatchNorm in training mode with gamma/beta as
optimizee parameters (``batch_norm=True``; ``False`` drops BN and its parameters, as in L2O-Scale's
copy of these nets) and a ReLU on the logits (``relu_logits=True``), which creates the "dead"
ln(ln 10) = 0.834 plateau of the paper's figures.

The ``n`` instances run as one grouped convolution: activations are ``[B, n*C, H, W]``, so that
instance ``i`` owns channels ``i*C .. (i+1)*C - 1`` and BatchNorm statistics stay per instance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.layout import Layout
from l2o.tasks.base import ParamInit
from l2o.tasks.datasets import ImageClassificationTask

BN_EPS = 1e-3  # tf.layers.batch_normalization's default


class ConvTask(ImageClassificationTask):
    """A population of small conv nets on MNIST (``dataset="mnist"``, stride 1) or CIFAR-10
    (``dataset="cifar10"``, stride 2).

    Args:
        channels: output channels of the two convs (16, 32).
        kernels: kernel sizes of the two convs (3, 5).
        stride: conv stride (1 on MNIST, 2 on CIFAR-10).
        batch_norm: BatchNorm (training mode, learnable gamma/beta) after each conv.
        relu_logits: apply ReLU to the logits (the original's quirk).
        init_std: std of the N(0, std^2) initialiser of conv/linear weights (biases 0, gamma 1).
    """

    def __init__(
        self,
        name: str,
        dataset: str,
        stride: int,
        channels: tuple[int, int] = (16, 32),
        kernels: tuple[int, int] = (3, 5),
        batch_norm: bool = True,
        relu_logits: bool = True,
        init_std: float = 0.01,
        batch_size: int = 128,
        sampling: str = "replacement",
        description: str = "",
    ) -> None:
        self.name, self.dataset, self.stride = name, dataset, stride
        self.channels, self.kernels = tuple(channels), tuple(kernels)
        self.batch_norm, self.relu_logits = batch_norm, relu_logits
        self.init_std, self.batch_size, self.sampling = init_std, batch_size, sampling
        self.description = description
        in_ch, size = (1, 28) if dataset == "mnist" else (3, 32)
        self.in_shape = (in_ch, size, size)
        shapes = []
        for i, (c, k) in enumerate(zip(self.channels, self.kernels, strict=True)):
            shapes += [(f"conv_{i}/w", (c, in_ch, k, k)), (f"conv_{i}/b", (c,))]
            if batch_norm:
                shapes += [(f"bn_{i}/gamma", (c,)), (f"bn_{i}/beta", (c,))]
            size = ((size - k) // stride + 1) // 2
            in_ch = c
        self.flat_features = in_ch * size * size
        shapes += [("linear/w", (self.flat_features, 10)), ("linear/b", (10,))]
        self.layout = Layout.from_shapes(shapes)

    def param_inits(self) -> dict[str, ParamInit]:
        inits = {}
        for name in self.layout.names:
            if name.endswith("/w"):
                inits[name] = ParamInit("normal", self.init_std)
            elif name.endswith("/gamma"):
                inits[name] = ParamInit("ones")
            else:
                inits[name] = ParamInit("zeros")
        return inits

    def options(self) -> dict:
        return {
            "dataset": self.dataset,
            "stride": self.stride,
            "batch_norm": self.batch_norm,
            "relu_logits": self.relu_logits,
            "init_std": self.init_std,
            "batch_size": self.batch_size,
            "sampling": self.sampling,
        }

    def logits(self, x: Tensor, images: Tensor) -> Tensor:
        n, b = images.shape[:2]
        p = self.layout.unflatten(x)
        h = images.to(x.dtype).transpose(0, 1).reshape(b, n * images.shape[2], *images.shape[3:])
        for i in range(len(self.channels)):
            w = p[f"conv_{i}/w"]
            h = F.conv2d(
                h,
                w.reshape(-1, *w.shape[2:]),
                p[f"conv_{i}/b"].reshape(-1),
                stride=self.stride,
                groups=n,
            )
            if self.batch_norm:
                var, mean = torch.var_mean(h, dim=(0, 2, 3), unbiased=False, keepdim=True)
                gamma = p[f"bn_{i}/gamma"].reshape(1, -1, 1, 1)
                beta = p[f"bn_{i}/beta"].reshape(1, -1, 1, 1)
                h = (h - mean) * torch.rsqrt(var + BN_EPS) * gamma + beta
            h = F.max_pool2d(torch.relu(h), 2, 2)
        h = h.reshape(b, n, -1).transpose(0, 1)  # [n, B, C*H*W] per instance
        logits = torch.baddbmm(p["linear/b"].unsqueeze(1), h, p["linear/w"])
        return torch.relu(logits) if self.relu_logits else logits
