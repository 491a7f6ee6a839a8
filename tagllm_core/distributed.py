"""Several processes training like one (``torchrun`` / ``accelerate launch``), for both stages.

Every process holds the frozen backbone, takes an interleaved share of each batch and scales its
loss by its share; ``sync_grads`` sums the gradients of the few trainable parameters (tag and
head) across processes, so the step equals the one-process step to float rounding. Decisions that
end a loop are the main process's (``from_main``). With one process every helper is a no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .exceptions import JobCancelled
from .train_progress import StageProgress

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .backbone import Backbone

__all__ = ["make_accelerator", "sync_grads", "from_main", "stop_if_cancelled", "leave_together"]


def make_accelerator(backbone: Backbone, grad_accum: int = 1) -> Accelerator:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=backbone.device.type == "cpu", gradient_accumulation_steps=grad_accum)
    # The gradient state is process-wide: a run that ended between two optimizer steps would leave it
    # "not syncing", and the next run's optimizer would skip its steps.
    accelerator.sync_gradients = True
    return accelerator


def sync_grads(accelerator: Accelerator, params: list[torch.Tensor], loss: torch.Tensor, grads: bool = True) -> float:
    """Sum gradients (and the loss) over processes; each process's loss is its share of the batch
    mean, so the sum is the full-batch gradient. Returns the batch loss. A no-op for one process.
    ``grads=False`` sums the loss alone: with gradient accumulation ``.grad`` is this process's running
    sum over the micro-steps, summed across processes once, at the optimizer step (summing it on every
    micro-step would add the other processes' earlier micro-steps again)."""
    if accelerator.num_processes == 1:
        return float(loss.detach())
    for p in params if grads else []:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad = accelerator.reduce(p.grad, reduction="sum")
    return float(accelerator.reduce(loss.detach().clone(), reduction="sum"))


def from_main(accelerator: Accelerator, values: list[float]) -> list[float]:
    """The main process's ``values`` (floats) on every process. Decisions that end a loop (early
    stopping, a cancel) are the main process's, so no process leaves a loop that another stays in,
    waiting forever in its next all-reduce. Returns ``values`` for one process."""
    if accelerator.num_processes == 1:
        return list(values)
    from accelerate.utils import broadcast

    return broadcast(torch.tensor(values, dtype=torch.float64, device=accelerator.device), from_process=0).tolist()


def stop_if_cancelled(accelerator: Accelerator, report: StageProgress) -> None:
    """Raise ``JobCancelled`` on every process when the main one's callback cancelled the job."""
    if accelerator.num_processes > 1 and from_main(accelerator, [float(report.cancelled)])[0]:
        raise JobCancelled("the job was cancelled")


def leave_together() -> None:
    """Wait for every process, then close the process group; a no-op when none is open.

    Called once a command's work is done. A rank that exits while another still works (the main one
    fits the card's baselines and the reference set alone) was seen to abort in gloo's teardown
    ("terminate called without an active exception", 2 of 6 two-process runs), failing a run whose
    work had finished on both ranks."""
    from .sharding import forget_shard

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    forget_shard()  # prediction's reference to the group: the group must be freed here, not at exit
    torch.distributed.destroy_process_group()
