"""A task from any user ``nn.Module`` and data, so learned optimizers can be evaluated on models
nobody wrote into the package.

The module's parameters become the flat layout; the population's losses are computed with
``torch.func.functional_call`` vectorised over instances by ``torch.func.vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from l2o.layout import Layout
from l2o.tasks.base import BatchStream, ParamInit, Task, generators


class _TensorStream(BatchStream):
    def __init__(self, inputs: Tensor, targets: Tensor, seeds, batch_size, split, device):
        self.inputs, self.targets = inputs.to(device), targets.to(device)
        self.gens = generators(seeds, split)
        self.batch_size = batch_size

    def next(self) -> tuple[Tensor, Tensor]:
        n_examples = self.inputs.shape[0]
        if self.batch_size is None or self.batch_size >= n_examples:
            idx = torch.arange(n_examples).expand(len(self.gens), -1)
        else:
            idx = torch.stack(
                [torch.randint(n_examples, (self.batch_size,), generator=g) for g in self.gens]
            )
        idx = idx.to(self.inputs.device)
        return self.inputs[idx], self.targets[idx]


class ModuleTask(Task):
    """Optimize a copy of ``module`` on ``data``.

    Args:
        module: any ``nn.Module``; its buffers are used as constants (put BatchNorm in eval mode or
            use ``track_running_stats=False``).
        data: ``(inputs, targets)`` tensors, or ``{split: (inputs, targets)}``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` for one instance (cross-entropy default).
        batch_size: minibatch size drawn with replacement per instance (``None``: full batch).
        init: ``"module"`` re-runs each submodule's ``reset_parameters`` under the instance's seed;
            a float ``std`` draws every tensor from N(0, std^2); ``"copy"`` starts every instance
            from the module's current values.
    """

    def __init__(
        self,
        module: nn.Module,
        data: tuple[Tensor, Tensor] | Mapping[str, tuple[Tensor, Tensor]],
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
        batch_size: int | None = 128,
        init: str | float = "module",
        name: str = "module",
        description: str = "",
    ) -> None:
        self.module = module
        self.data = dict(data) if isinstance(data, Mapping) else {"train": tuple(data)}
        self.train_split = self.eval_split = next(iter(self.data))
        self.loss_fn, self.batch_size, self.init_mode = loss_fn, batch_size, init
        self.name, self.description = name, description or f"user module {type(module).__name__}"
        params = dict(module.named_parameters())
        if not params:
            raise ValueError("the module has no parameters to optimize")
        self.layout = Layout.from_shapes({k: tuple(v.shape) for k, v in params.items()})
        self.buffers = dict(module.named_buffers())

    def param_inits(self) -> dict[str, ParamInit]:
        std = float(self.init_mode) if not isinstance(self.init_mode, str) else 0.0
        return {name: ParamInit("normal", std) for name in self.layout.names}

    def init(self, seeds: Sequence[int], device="cpu", dtype=torch.float32) -> Tensor:
        if not isinstance(self.init_mode, str):
            return super().init(seeds, device, dtype)
        if self.init_mode not in ("module", "copy"):
            raise ValueError(
                f"init must be 'module', 'copy' or a float std, not {self.init_mode!r}"
            )
        rows = []
        for seed in seeds:
            clone = copy.deepcopy(self.module)
            if self.init_mode == "module":
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    for sub in clone.modules():
                        if hasattr(sub, "reset_parameters"):
                            sub.reset_parameters()
            rows.append(torch.cat([p.detach().reshape(-1).cpu() for p in clone.parameters()]))
        return torch.stack(rows).to(device=device, dtype=dtype)

    def stream(self, seeds, split=None, device="cpu") -> _TensorStream:
        split = split or self.eval_split
        if split not in self.data:
            raise ValueError(f"no data for split {split!r}; the task has {sorted(self.data)}")
        inputs, targets = self.data[split]
        return _TensorStream(inputs, targets, seeds, self.batch_size, split, device)

    def loss(self, x: Tensor, batch) -> Tensor:
        inputs, targets = batch
        buffers = {k: v.to(x.device) for k, v in self.buffers.items()}

        def single(params, inp, tgt):
            return self.loss_fn(functional_call(self.module, (params, buffers), (inp,)), tgt)

        return vmap(single)(self.layout.unflatten(x), inputs, targets)
