"""Data-parallel meta-training on ``torch.distributed`` (gloo on CPU, NCCL on GPU).

A meta-step's ``instances`` optimizees are split into **shards** of consecutive instance seeds
(``shard_size``, :class:`~l2o.training.config.MetaConfig`). Each process (*rank*) runs a
contiguous block of the shards: it unrolls each of its shards and backpropagates the shard's
surrogate, weighted by ``shard instances / instances`` (the population mean is normalised by
``instances``, not by the shard). Every shard's flattened meta-gradient (with the shard's
weighted meta-loss and statistics appended) is gathered on every rank and the rows are **summed
in shard order** (:meth:`ShardReducer.sum_in_order`). Every rank thus holds the same reduced
gradient, bit for bit, whatever the number of ranks: ``--nproc 2`` and ``--nproc 1`` with the same
shard size give identical weights, and every decision taken from it (skip a non-finite step,
curriculum, best checkpoint) is the same on every rank without further messages.

Validation seeds are split across the ranks in contiguous blocks and the per-seed losses
gathered in seed order (:meth:`ShardReducer.gather_rows`), so every rank computes the same score.

Processes are started by ``torchrun`` (``torch.distributed.run``; one or many nodes) or by
``l2o train --nproc N`` itself (:func:`launch`: the same elastic agent on the local node). A
process started that way finds ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in its environment and
joins the group (:func:`join_from_environment`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

#: The environment ``torchrun`` gives each process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
#: How long a collective waits for a silent rank before giving up.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class RankFailure(RuntimeError):
    """Another rank stopped (killed, crashed): this one cannot continue the meta-step."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` of ``world`` (``0`` of ``1`` alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes the run's files."""
        return self.rank == 0


def current() -> Ranks:
    """The ranks of the initialised process group, or a single process."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def started_by_torchrun() -> bool:
    """Whether ``torchrun`` (or :func:`launch`) started this process."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def join_from_environment(device: str = "cpu") -> Ranks:
    """Join the process group described by the environment (``torchrun``'s variables), once:
    gloo on CPU, NCCL on CUDA with one GPU per local rank (``LOCAL_RANK``)."""
    if not started_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return current()
    backend = "gloo"
    if device.startswith("cuda"):
        backend = "nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return current()


def leave() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_rank(code: int = 0) -> NoReturn:
    """Leave the group and end this rank now, without the interpreter's teardown. gloo's worker
    threads can still hold tensors then, and destroying them during finalisation aborts the
    process now and then ("terminate called without an active exception", seen in the test
    suite): the elastic agent would then report a run that finished and saved everything as a
    failed rank. Call it once everything is written; what was printed is flushed first."""
    leave()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# -- shards --------------------------------------------------------------------------------------
def shard_bounds(instances: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of every shard of ``instances`` (the last one may be smaller)."""
    return [(s, min(s + shard_size, instances)) for s in range(0, instances, shard_size)]


def block(count: int, ranks: Ranks) -> range:
    """The contiguous block of ``count`` items (shards, validation seeds) that ``ranks.rank``
    runs; blocks are in rank order, so concatenating them in rank order restores item order."""
    return range(count * ranks.rank // ranks.world, count * (ranks.rank + 1) // ranks.world)


def resolve_shard_size(shard_size: int | None, instances: int, world: int) -> int | None:
    """The shard size a run uses: the configured one; with several ranks and none configured,
    one instance per shard. Refuses fewer shards than ranks (a rank would have no work)."""
    if shard_size is None and world > 1:
        shard_size = 1
    if shard_size is not None:
        shards = len(shard_bounds(instances, shard_size))
        if shards < world:
            raise ValueError(
                f"{world} processes need at least {world} shards, but instances {instances} in "
                f"shards of {shard_size} make {shards}; raise --instances or lower --shard-size"
            )
    return shard_size


class ShardReducer:
    """Gathers per-shard (or per-seed) rows across the ranks, in shard order, on ``device``
    (the training device: NCCL gathers CUDA tensors, gloo CPU ones)."""

    def __init__(self, ranks: Ranks, device: torch.device | str = "cpu") -> None:
        self.ranks, self.device = ranks, torch.device(device)

    def _all_gather(self, local: Tensor, counts: Sequence[int]) -> Tensor:
        """Rows ``local`` of every rank (``counts[r]`` of rank ``r``), concatenated in rank
        order."""
        if self.ranks.world == 1:
            return local
        local = local.to(self.device)
        most = max(counts)
        padded = local.new_zeros((most, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.ranks.world)]
        try:
            dist.all_gather(parts, padded)
        except RuntimeError as err:  # a peer died: gloo/NCCL report a closed connection
            raise RankFailure(
                f"rank {self.ranks.rank} lost contact with another rank ({err.__class__.__name__})"
            ) from err
        return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])

    def gather_rows(self, local: Tensor, total: int) -> Tensor:
        """The ``total`` rows of all ranks in item order, given this rank's :func:`block`."""
        counts = [len(block(total, Ranks(r, self.ranks.world))) for r in range(self.ranks.world)]
        return self._all_gather(local, counts)

    def sum_in_order(self, rows: Sequence[Tensor], shards: int) -> Tensor:
        """The sum of every shard's row, added one at a time in shard order (so the result is
        the same bits whatever the number of ranks); ``rows`` are this rank's shards'."""
        every = self.gather_rows(torch.stack(list(rows)), shards)
        total = every[0].clone()
        for row in every[1:]:
            total += row
        return total


# -- the launcher --------------------------------------------------------------------------------
def threads_per_rank(nproc: int) -> int:
    """CPU ranks split this process's intra-op threads between them (at least one each)."""
    return max(1, torch.get_num_threads() // nproc)


def launch(args: Sequence[str], nproc: int, device: str = "cpu") -> None:
    """Start ``nproc`` local ranks of ``python -m l2o.cli ARGS`` through torch's elastic agent
    (what ``torchrun --standalone --nproc-per-node N`` does) and wait for them.

    Raises:
        RankFailure: a rank failed; the message names it (the agent has stopped the others).
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise ValueError(
            f"--nproc {nproc} on cuda needs {nproc} GPUs (one per rank); "
            f"{torch.cuda.device_count()} visible"
        )
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank(nproc))
    # the agent's own log lines (closing signals, failure tables) repeat what RankFailure says
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "l2o.cli", *args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        how = (
            f"was killed by signal {failure.signal_name()}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        raise RankFailure(f"rank {rank} {how}; the other ranks were stopped") from None
