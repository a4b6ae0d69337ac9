"""``torch.compile`` for a rule's step, with a fallback to eager execution.

Compiling the per-step function of a learned rule fuses its many small elementwise kernels
(measured 1.27x faster meta-training of L2O-DM on the 2-core CPU; docs/performance.md). Compilation
needs a working C compiler (CPU) or Triton (GPU); when it fails, the step runs eagerly with a
warning instead of stopping the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch


class CompiledStep:
    """Wrap ``fn`` (e.g. ``rule.step``); the first failure of the compiled version disables it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Any] | None = torch.compile(fn, dynamic=False)

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as err:  # no C compiler, unsupported op or backend, ...
                warnings.warn(
                    f"torch.compile of {getattr(self.fn, '__qualname__', self.fn)} failed "
                    f"({type(err).__name__}: {str(err)[:200]}); continuing in eager mode",
                    stacklevel=2,
                )
                self.compiled = None
        return self.fn(*args)
