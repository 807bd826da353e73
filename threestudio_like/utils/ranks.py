"""Which training process this is, and the seed each process uses.

With several devices (``--gpu 0,1``) every rank runs the same script with the same config
seed; without folding the rank in, all ranks would draw the same cameras and the same noise
and the extra devices would only repeat rank 0's work. ``rank_seed(seed, 0) == seed``, so a
single-process run is unchanged.
"""

from __future__ import annotations

import os

import torch.distributed as dist

# variables set by the launchers (torchrun / Lightning's subprocess launcher / SLURM / LSF), in
# the order Lightning reads them
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank among all training processes (0 when not distributed).

    ``torch.distributed`` when it is initialised; before that (e.g. when the CLI seeds, ahead
    of the trainer) the launcher's environment: Lightning starts rank r of a one-node run with
    ``LOCAL_RANK=r`` (and ``NODE_RANK`` and ``LOCAL_WORLD_SIZE`` place it among several nodes).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    env = os.environ
    if "RANK" not in env and "LOCAL_RANK" in env and "NODE_RANK" in env and "LOCAL_WORLD_SIZE" in env:
        return int(env["NODE_RANK"]) * int(env["LOCAL_WORLD_SIZE"]) + int(env["LOCAL_RANK"])
    for name in _RANK_VARIABLES:
        if name in env:
            return int(env[name])
    return 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``: ``seed + rank`` (threestudio's convention; rank 0 keeps ``seed``)."""
    if rank < 0:
        raise ValueError(f"a process rank is non-negative, got {rank}")
    return int(seed) + int(rank)
