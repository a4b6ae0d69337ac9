"""``torch.compile`` for a rule's step, with a fallback to eager execution.

Compiling the per-step function of a learned rule fuses its many small elementwise kernels
(measured 1.27x faster meta-training of L2O-DM on the 2-core CPU; docs/performance.md). Compilation
needs a working C compiler (CPU) or Triton (GPU); when it fails, the step runs eagerly with a
warning instead of stopping the run.

Compiled code is cached on disk (:func:`use_persistent_cache`): Inductor's FX-graph and
AOT-autograd caches under ``<user cache dir>/l2o/torchinductor`` (unless ``TORCHINDUCTOR_CACHE_DIR``
is set), so a second run with the same shapes skips code generation (measured for the L2O-DM
trainer: docs/performance.md).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import torch


def use_persistent_cache() -> None:
    """Point Inductor's caches at the user cache directory (unless ``TORCHINDUCTOR_CACHE_DIR``
    is set; the default, under ``/tmp``, does not survive a reboot) and turn the FX-graph and
    AOT-autograd caches on."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        path = Path(platformdirs.user_cache_dir("l2o")) / "torchinductor"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # other torch versions: their defaults
        pass


class CompiledStep:
    """Wrap ``fn`` (e.g. ``rule.step``); the first failure of the compiled version disables it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        use_persistent_cache()
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
