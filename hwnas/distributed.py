"""One-shot searches past one process: ``torchrun`` launches the ranks, ``DistributedDataParallel`` averages
the supernet's weight gradients, and this module holds what DDP does not do for a supernet.

    torchrun --standalone --nproc-per-node 2 -m hwnas search --method proxyless --latency-target 50%
    torchrun --nnodes 2 --node-rank R --master-addr HOST --master-port 29500 --nproc-per-node 8 -m hwnas search ...

What every rank must agree on, and how (``../shared/notes/scale-anchors.md``, "DDP pitfalls"):

- **The path.** A rank that ran another path would average zeros into parameters it did not use (DDP divides
  the sum by the world size) and leave momentum and weight decay acting on them. Every random draw of a weight
  or architecture step is made under ``step_rng(seed, step, phase)``: the global generator is seeded from the
  run's seed and the global step (OFA's and HAT's scheme), so every rank samples the same path, a resumed run
  samples the paths it would have, and a 1-process run samples the paths an N-rank run does.
- **The architecture parameters** (alphas, gates, a controller) sit outside the module DDP wraps, so DDP never
  averages them (NNI's ProxylessNAS/DARTS gave different architectures on different GPUs for this): a
  strategy averages its architecture gradients with ``average_`` before its optimizer step; ENAS averages
  its reward instead (every rank then takes the same REINFORCE step). The latency term is a function of those
  parameters and the table, so it is the same on every rank.
- **BatchNorm** normalizes over the global batch (``CrossRankBatchNorm2d``: the statistics all-reduced, the
  gradient through them exact), so N ranks on B/N samples each take the step one process takes on B; the
  running statistics are then equal on every rank (DDP's ``broadcast_buffers`` also copies rank 0's).
  ``torch.nn.SyncBatchNorm`` runs on GPUs only and synchronizes in every training-mode forward, even under
  ``no_grad``, where a rank-0-only BN recalibration would wait forever; this one synchronizes only in a
  forward that builds a graph. One-Shot's ghost BN normalizes each rank's ghost batches locally and updates
  its running statistics from every rank's (``CrossRankGhostBatchNorm2d``).
- **The data**: each global batch (``--batch-size`` is global) is cut into N contiguous slices, one per rank
  (``RankSlices``), from one shuffle seeded alike on every rank, so the union of the ranks' batches at a step
  is the batch one process would take.
- **The run directory** is written by rank 0 alone (config, metrics, checkpoints, the selection phase and the
  final derivation); the other ranks get the checkpoint's state by broadcast, so nodes need no shared disk.
  ``check_consistent`` compares a float64 checksum of every parameter and buffer across ranks at each epoch's
  end and stops the run in one line if a rank diverged.

gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``).
"""
from __future__ import annotations

import inspect
import logging
import os
import warnings
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger("hwnas.distributed")

#: how long a rank waits for the others in one collective (rank 0 evaluating an epoch, or profiling a table)
TIMEOUT = timedelta(minutes=60)


class Distributed:
    """The process group of a torchrun launch (``from_env``), or a single process (``Distributed()``)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, backend: str | None = None,
                 device: torch.device | None = None):
        self.rank, self.world_size, self.local_rank, self.backend = rank, world_size, local_rank, backend
        self.device = device

    # -- launching ----------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, device: str | torch.device) -> "Distributed":
        """The launch torchrun describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), its
        process group initialized (gloo for CPU, nccl for CUDA; each rank on ``cuda:LOCAL_RANK``); a single
        process when torchrun did not launch this one. A torchrun launch of one process is a group of one
        (DDP, the collectives and the checks run as they do on N ranks: a 1-GPU node checks the nccl path)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        device = torch.device(device)
        if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
            return cls(device=device)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise ValueError(f"rank {rank}: LOCAL_RANK {local} but this node has {torch.cuda.device_count()} "
                                 f"CUDA device(s); give torchrun at most that many --nproc-per-node")
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
        if rank != 0:  # one log, one progress bar: rank 0's
            logging.getLogger("hwnas").setLevel(logging.WARNING)
        log.info("torchrun: %d ranks (%s), rank %d on %s", world, backend, rank, device)
        return cls(rank, world, local, backend, device)

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives ----------------------------------------------------------------------------------
    def average_(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Replace each tensor by its mean over the ranks (one all-reduce of them flattened); in place."""
        if not self.active or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return tensors

    def mean(self, value: float) -> float:
        """The mean over the ranks of a number."""
        if not self.active:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t) / self.world_size

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (pickled). An exception is broadcast too and raised on every rank,
        so a bad input found by rank 0 ends every rank with the same one-line error instead of a hang."""
        if not self.active:
            if isinstance(obj, BaseException):
                raise obj
            return obj
        if isinstance(obj, BaseException) and type(obj) is not ValueError:
            obj = ValueError(str(obj))  # an exception class of ours may not unpickle: the one line is what counts
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def check_consistent(self, module: nn.Module, what: str) -> None:
        """Stop (ValueError, one line) when ``module``'s parameters and buffers differ between ranks (a float64
        checksum of each, compared as min and max over the ranks)."""
        if not self.active:
            return
        with torch.no_grad():
            sums = torch.stack([t.detach().double().sum() for t in list(module.parameters()) + list(module.buffers())
                                if t.is_floating_point()]).to(self._comm_device())
            lo, hi = sums.clone(), sums.clone()
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            bad = int(((hi - lo).abs() > 1e-6 * (1 + hi.abs())).sum())
        if bad:
            raise ValueError(f"{what}: {bad} parameter/buffer tensors differ between the {self.world_size} ranks "
                             f"(a rank trained another path?); stopping before the run directory records it")

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -- the model and the data ---------------------------------------------------------------------
    def wrap(self, supernet: nn.Module) -> nn.Module:
        """``supernet`` with its BatchNorms cross-rank, inside DDP (unused parameters allowed: only a path
        runs; a globally unused parameter keeps ``grad = None``, so SGD leaves it alone as in one process)."""
        convert_batchnorm(supernet)
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
        return ddp(supernet, device_ids=ids, find_unused_parameters=True, **{sync: True})

    def shard(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """``loader`` with each batch cut to this rank's contiguous slice (``RankSlices``). Its generator goes
        along: each epoch's iterator draws its base seed from it before the sampler draws the shuffle, so
        without it the shuffles would differ from one process's."""
        if not self.active:
            return loader
        return torch.utils.data.DataLoader(loader.dataset, batch_sampler=RankSlices(loader.batch_sampler, self.rank,
                                           self.world_size), num_workers=loader.num_workers,
                                           pin_memory=loader.pin_memory, generator=loader.generator,
                                           persistent_workers=loader.num_workers > 0)


def cpu_state(obj):
    """``obj`` (a checkpoint's state) with every tensor on the CPU: what one rank sends another (a CUDA tensor
    would arrive on the sender's device)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


class RankSlices:
    """The batches of ``batch_sampler`` cut into ``world`` contiguous slices of equal size, slice ``rank``
    yielded. A last batch that does not divide by ``world`` is dropped (equal slices keep the mean of the
    ranks' losses the loss of the global batch)."""

    def __init__(self, batch_sampler, rank: int, world: int):
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def __iter__(self):
        for batch in self.batch_sampler:
            n = len(batch) // self.world
            if n * self.world != len(batch) or n == 0:
                continue
            yield list(batch)[self.rank * n:(self.rank + 1) * n]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # an upper bound: the last batch may be dropped


@contextmanager
def step_rng(seed: int, step: int, phase: int = 0):
    """Run a step's random draws from a generator seeded by ``(seed, step, phase)`` (0: the weight step,
    1: the architecture step), the caller's generator state restored after it (see the module docstring)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(((int(seed) * 1_000_003 + int(step)) * 4 + int(phase)) % (2**63 - 1))
        yield


# -- BatchNorm over the global batch ------------------------------------------------------------------------
def cross_rank_batch_norm(x: torch.Tensor, running_mean, running_var, weight, bias, factor: float, eps: float,
                          group=None) -> torch.Tensor:
    """Training-mode batch norm of ``x`` (this rank's part of the global batch) with the statistics of the
    global batch: per-channel sums of ``x - shift`` and its square all-reduced (differentiable: the gradient
    reaching each rank's ``x`` carries every rank's terms), ``shift`` the running mean (the same on every rank;
    it keeps the variance free of cancellation). Running statistics updated like ``nn.BatchNorm2d``'s (the
    unbiased variance)."""
    from torch.distributed.nn.functional import all_reduce

    c = x.shape[1]
    shape = (1, c) + (1,) * (x.dim() - 2)
    dims = [0] + list(range(2, x.dim()))
    shift = running_mean.detach().to(x.dtype) if running_mean is not None else x.new_zeros(c)
    xs = x - shift.view(shape)
    count = x.new_tensor([x.numel() / c])
    with warnings.catch_warnings():  # deprecated in torch 2.14 for a private module; still the differentiable one
        warnings.simplefilter("ignore", FutureWarning)
        stats = all_reduce(torch.cat([xs.sum(dims), (xs * xs).sum(dims), count]), group=group or dist.group.WORLD)
    n = stats[-1].detach()
    m1, m2 = stats[:c] / n, stats[c:2 * c] / n
    var = (m2 - m1 * m1).clamp_min(0)
    mean = shift + m1
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - factor).add_(factor * mean.detach())
            running_var.mul_(1 - factor).add_(factor * var.detach() * n / (n - 1).clamp_min(1))
    y = (x - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    return y


def syncs(x: torch.Tensor, training: bool) -> bool:
    """Whether a training-mode BN forward synchronizes: a process group (of one rank too: torchrun on one
    GPU runs the path N GPUs run) and a graph being built (BN recalibration and ENAS's reward run under
    ``no_grad`` on one rank's batches)."""
    return training and torch.is_grad_enabled() and dist.is_available() and dist.is_initialized()


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the global batch in a training forward with a graph (``cross_rank_batch_norm``);
    otherwise ``nn.BatchNorm2d`` itself. The state dict is the same, so checkpoints move between 1 and N ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not syncs(x, self.training):
            return super().forward(x)
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return cross_rank_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, factor, self.eps)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Make every plain ``nn.BatchNorm2d`` in ``module`` a ``CrossRankBatchNorm2d`` and every ghost BN a
    ``CrossRankGhostBatchNorm2d`` (in place: same tensors, same state dict)."""
    from hwnas.mixed.ghost_bn import CrossRankGhostBatchNorm2d, GhostBatchNorm2d

    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = CrossRankBatchNorm2d
        elif type(m) is GhostBatchNorm2d:
            m.__class__ = CrossRankGhostBatchNorm2d
    return module


__all__ = ["Distributed", "RankSlices", "cpu_state", "step_rng", "CrossRankBatchNorm2d", "convert_batchnorm",
           "cross_rank_batch_norm"]
