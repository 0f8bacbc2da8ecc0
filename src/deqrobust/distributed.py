"""Data-parallel training over torch.distributed (launched by ``torchrun``), without DDP.

``deqrobust train`` under ``torchrun --nproc_per_node N`` (environment RANK, WORLD_SIZE,
LOCAL_RANK) joins a process group (nccl on CUDA, gloo on CPU; ``training.distributed_backend``)
and runs one replica per process. Design:

* **Gradients are averaged explicitly** after ``backward()`` and before ``optimizer.step()``
  (one flat all-reduce per dtype), instead of wrapping the model in DistributedDataParallel.
  DDP hooks only ``module.forward``; a DEQ is trained through ``deq_logits.DEQLogits``, which
  calls ``deq.prepare``/``deq.f``/``deq.head`` directly (and custom autograd functions whose
  backward runs an adjoint solver), so DDP's reducer would either never fire or see
  parameters "unused" from its point of view. The explicit average works the same for every
  estimator, for pretraining unrolls, Jacobian regularisation and for the plain baselines.
  The cost is no overlap of communication with backward (DDP's buckets); for our model
  sizes the all-reduce is small next to the solver.
* **Sharding**: ``training.batch_size`` stays the *global* batch. Every rank draws the same
  seeded epoch order (``data.train_loader``) and keeps its contiguous slice of each global
  batch, so the union of the shards is the single-process batch. Because each rank's loss
  is a mean over an equal-size shard, the average of the rank gradients is the gradient of
  the mean over the global batch (up to float summation order).
* **Identical replicas**: rank 0's initial weights (parameters and buffers) are broadcast,
  and every control decision of a step (pretraining or not, Jacobian regularisation, budget
  jitter, attack starts) comes from generators seeded by (seed, iteration), the same on
  every rank; all ranks apply the same averaged gradient, so they stay bit-identical.
* **BatchNorm** (MDEQ stem/head, ResNet baselines) normalises each rank's shard with that
  shard's statistics in train mode, as DDP does without SyncBatchNorm. SyncBatchNorm is not
  used: it does not run on CPU, and it adds a collective to every BN call, which must then
  happen the same number of times on every rank. Running statistics are kept equal by
  broadcasting rank 0's buffers after each step (DDP's ``broadcast_buffers``), so eval-mode
  passes (adversarial example generation, dev evaluation) see the same statistics on every
  rank. Consequence: with BatchNorm, N ranks of B/N images are not numerically the same as
  one process with B images (normalisation over B/N instead of B); it equals one process
  that normalises each B/N slice separately and averages their gradients (tests/test_distributed.py).
* **Outputs**: only rank 0 writes (metrics.csv, checkpoint.pt, summary.json, resume.pt) and
  runs dev/test evaluation; the other ranks wait at a barrier (the process group timeout is
  ``TIMEOUT`` so a long evaluation is not taken for a hang). ``resume.pt`` carries every
  rank's RNG states, and all ranks read it on restart.

A single process (no WORLD_SIZE, or WORLD_SIZE=1) takes none of these paths.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from deqrobust.errors import ConfigError

TIMEOUT = datetime.timedelta(hours=2)
BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(backend: str, device: torch.device) -> tuple[Context, torch.device]:
    """Join (or reuse) the process group when launched with several processes; return the
    context and this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if not launched():
        return Context(), device
    if backend not in BACKENDS:
        raise ConfigError(f"training.distributed_backend={backend!r}; valid: {', '.join(BACKENDS)}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                "launch at most that many processes per node (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("training.distributed_backend=nccl needs CUDA; use gloo (or auto) on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    ctx = Context(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())
    return ctx, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _broadcast_(tensor: torch.Tensor) -> None:
    if tensor.is_contiguous():
        dist.broadcast(tensor, 0)
    else:  # e.g. a channels-last weight: send a contiguous copy, write it back in place
        tmp = tensor.contiguous()
        dist.broadcast(tmp, 0)
        tensor.copy_(tmp)


@torch.no_grad()
def broadcast_state(model: nn.Module, buffers_only: bool = False) -> None:
    """Rank 0's parameters (unless ``buffers_only``) and buffers onto every rank."""
    tensors = list(model.buffers()) if buffers_only else [*model.parameters(), *model.buffers()]
    for tensor in tensors:
        _broadcast_(tensor)


@torch.no_grad()
def average_gradients(model: nn.Module, world_size: int, *scalars: torch.Tensor) -> list[float]:
    """Average every ``.grad`` of ``model`` over the ranks (one flat all-reduce per dtype and
    device) and the given scalar tensors (one more all-reduce); return the averaged scalars.

    Which parameters have a gradient is the same on every rank (the step's control flow is
    seeded by the iteration), so the flat buffers line up.
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in model.parameters():
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
    if not scalars:
        return []
    device = next(iter(groups))[1] if groups else scalars[0].device
    values = torch.stack([s.detach().reshape(()).to(device, torch.float64) for s in scalars])
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return (values / world_size).tolist()
