"""Prediction split over processes or GPUs (``torchrun --nproc_per_node N -m tagllm_core predict …``).

Every process holds the frozen backbone (on CUDA its own ``cuda:LOCAL_RANK``, see ``backbone.pick_device``),
reads the same input chunks and cleans the same rows; what is split is the model work. Each chunk's
batches, planned exactly as one process plans them (``prefix_cache.grouped_batches``: grouped, length-sorted,
token-capped), are dealt round-robin, batch ``k`` to process ``k mod N``, and the head outputs of every
batch (a few floats per row) are gathered to every process over a gloo group. A row's output depends on its
batch mates to float rounding, so splitting batches rather than rows is what makes the output equal the
one-process output byte for byte (``tests/test_sharded_predict.py``).

Only process 0 writes the output, reports progress and prints. Decisions that read the output (how many
rows ``--resume`` keeps, or why it refuses) are process 0's, broadcast to the others, so every process
predicts the same chunks; an error there is raised on every process instead of leaving the others
waiting in the next gather. Cleaning, the applicability check and the shared prefix of each group run on
every process (each needs them to plan the same batches), so they do not get faster with more processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional, TypeVar

from .exceptions import InputError

if TYPE_CHECKING:  # torch is imported by the functions that need it, not with the module
    from torch.distributed import ProcessGroup

__all__ = ["Shard", "current_shard", "forget_shard", "batch_runner", "shard_predictors", "main_decides"]

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process run: ``rank`` of ``world`` processes; ``group``: the gloo
    process group the results travel over (objects on CPU, whatever the backbone's device)."""

    rank: int
    world: int
    group: Optional[ProcessGroup]  # Optional as torch types dist.group.WORLD; set once the group exists

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_SHARD: Optional[Shard] = None


def current_shard() -> Optional[Shard]:
    """This process's ``Shard`` under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1), else ``None``.
    Joins the process group on first use (gloo, from the launcher's environment); where one exists already
    (an NCCL one of Accelerate) a gloo group beside it carries the results. Memoised: creating a group is
    a collective, done once per process."""
    global _SHARD
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if _SHARD is None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
            group = dist.group.WORLD
        else:
            group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        _SHARD = Shard(dist.get_rank(), dist.get_world_size(), group)
    return _SHARD


def forget_shard() -> None:
    """Drop the memoised ``Shard``, and with it this module's reference to the process group, so that
    closing the group frees it now: a group still referenced is destroyed at interpreter exit, after
    the other process may have gone, and gloo then aborted the process ("terminate called without an
    active exception", 2 of 19 two-process runs of tests/test_sharded_predict.py)."""
    global _SHARD
    _SHARD = None


def batch_runner(shard: Shard) -> Callable[[Iterator], Iterator]:
    """A ``Predictor.batch_runner``: from ``(indices, run)`` pairs (``run()`` gives the batch's outputs), runs
    this process's share, gathers every process's, and yields ``(indices, outputs)`` for every batch in order.
    Every process must call it the same number of times (once per ``Predictor.predict``), even with no batch."""
    import torch.distributed as dist

    def run(batches: Iterator) -> Iterator:
        order, mine = [], {}
        for k, (idx, compute) in enumerate(batches):
            order.append(idx)
            if k % shard.world == shard.rank:
                mine[k] = compute()
        gathered: list = [None] * shard.world
        dist.all_gather_object(gathered, mine, group=shard.group)
        outputs = {k: out for part in gathered for k, out in part.items()}
        return ((idx, outputs[k]) for k, idx in enumerate(order))

    return run


def shard_predictors(predictors: list, shard: Shard) -> None:
    """Make each ``prediction.Predictor`` of ``predictors`` run its share of every batch list."""
    runner = batch_runner(shard)
    for predictor in predictors:
        predictor.batch_runner = runner


def main_decides(shard: Optional[Shard], decide: Callable[[], T]) -> T:
    """``decide()`` run by process 0 alone (it reads or cuts the output), its result on every process.
    An exception on process 0 is raised on every process (there, an ``InputError`` with its message)."""
    if shard is None:
        return decide()
    import torch.distributed as dist

    box: list = [None]
    error: Optional[BaseException] = None
    if shard.is_main:
        try:
            box[0] = ("ok", decide())
        except Exception as err:  # every process must hear of it, or the others wait in the next gather
            error, box[0] = err, ("error", str(err))
    dist.broadcast_object_list(box, src=0, group=shard.group)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise InputError(value)
    return value
