"""Image-classification data for the tasks: splits on a device, and minibatch streams.

Minibatches of 128 are drawn uniformly *with replacement* each time a loss is built, as in the
original L2O-DM/RNNprop code (docs/method.md 2.1); ``sampling="epoch"`` instead shuffles without
replacement epoch by epoch, as L2O-Scale's code does (docs/method.md 2.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.data import load_dataset
from l2o.tasks.base import BatchStream, Task, generators

#: MNIST's "train" split is the 55,000 images after the first 5,000, which ``read_data_sets``
#: (used by the original code) holds out as "validation".
MNIST_VALIDATION_SIZE = 5_000
SPLITS = ("train", "validation", "test")


@lru_cache(maxsize=8)
def split_arrays(dataset: str, split: str, device: str) -> tuple[Tensor, Tensor]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of one split, cached per device."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data = load_dataset(dataset)
    if split == "test":
        images, labels = data.test_images, data.test_labels
    else:
        images, labels = data.train_images, data.train_labels
        if dataset == "mnist":
            cut = MNIST_VALIDATION_SIZE
            images, labels = (
                (images[cut:], labels[cut:]) if split == "train" else (images[:cut], labels[:cut])
            )
        elif split == "validation":
            raise ValueError("CIFAR-10 has no validation split; use 'train' or 'test'")
    images_t = torch.from_numpy(images)
    images_t = images_t.unsqueeze(1) if images_t.ndim == 3 else images_t.permute(0, 3, 1, 2)
    return (
        images_t.contiguous().to(device),
        torch.from_numpy(labels).long().to(device),
    )


class MinibatchStream(BatchStream):
    """Per-instance minibatches: ``next()`` returns ``(images float [n, B, C, H, W] in [0, 1],
    labels [n, B])``. Instance ``i`` draws its indices from its own generator."""

    def __init__(
        self,
        dataset: str,
        split: str,
        seeds: Sequence[int],
        batch_size: int = 128,
        device: torch.device | str = "cpu",
        sampling: str = "replacement",
    ) -> None:
        if sampling not in ("replacement", "epoch"):
            raise ValueError(f"sampling must be 'replacement' or 'epoch', not {sampling!r}")
        self.images, self.labels = split_arrays(dataset, split, str(torch.device(device)))
        self.size = self.images.shape[0]
        self.batch_size = batch_size
        self.sampling = sampling
        self.gens = generators(seeds, split)
        self._perms: list[Tensor] = [torch.empty(0, dtype=torch.long) for _ in seeds]
        self._pos = [0 for _ in seeds]

    def _epoch_indices(self, i: int) -> Tensor:
        out = []
        need = self.batch_size
        while need:
            if self._pos[i] >= len(self._perms[i]):
                self._perms[i] = torch.randperm(self.size, generator=self.gens[i])
                self._pos[i] = 0
            take = min(need, len(self._perms[i]) - self._pos[i])
            out.append(self._perms[i][self._pos[i] : self._pos[i] + take])
            self._pos[i] += take
            need -= take
        return torch.cat(out)

    def indices(self) -> Tensor:
        """``[n, B]`` example indices of the next batch (CPU)."""
        if self.sampling == "replacement":
            rows = [torch.randint(self.size, (self.batch_size,), generator=g) for g in self.gens]
        else:
            rows = [self._epoch_indices(i) for i in range(len(self.gens))]
        return torch.stack(rows)

    def next(self) -> tuple[Tensor, Tensor]:
        idx = self.indices().to(self.images.device, non_blocking=True)
        images = self.images[idx].float().div_(255.0)
        return images, self.labels[idx]

    def sample(
        self, size: int, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]:
        """``size`` distinct examples per instance (the whole split if it is smaller), in the
        layout of :meth:`next`; each instance draws from its own generator."""
        k = min(int(size), self.size)
        gens = self.gens if generators is None else generators
        idx = torch.stack([torch.randperm(self.size, generator=g)[:k] for g in gens])
        idx = idx.to(self.images.device)
        return self.images[idx].float().div_(255.0), self.labels[idx]


class ImageClassificationTask(Task):
    """A task whose loss is the mean softmax cross-entropy of ``logits`` on minibatches of
    ``dataset``. Subclasses set ``dataset``, ``batch_size``, ``sampling`` and define ``logits``."""

    dataset: str
    batch_size: int
    sampling: str

    def stream(self, seeds, split=None, device="cpu") -> MinibatchStream:
        return MinibatchStream(
            self.dataset, split or self.eval_split, seeds, self.batch_size, device, self.sampling
        )

    def logits(self, x: Tensor, images: Tensor) -> Tensor:
        """``[n, B, classes]`` logits of population ``x`` on per-instance ``images``."""
        raise NotImplementedError

    def loss(self, x: Tensor, batch) -> Tensor:
        images, labels = batch
        logits = self.logits(x, images)
        n, b, c = logits.shape
        ce = F.cross_entropy(logits.reshape(n * b, c), labels.reshape(n * b), reduction="none")
        return ce.view(n, b).mean(1)
