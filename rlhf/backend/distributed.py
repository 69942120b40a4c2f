"""Multi-process runs: process group from the launcher's environment, rank helpers, rank-0-only side effects.

Launchers: `torchrun` and the `deepspeed` launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
a submitit job with several tasks (hydra/launcher=slurm, tasks_per_node > 1) is read through submitit's
JobEnvironment. A plain `python -m rlhf.train` is world size 1 and, without DeepSpeed, never creates a process group:
every helper here is then the identity, so the trainer calls them unconditionally.

Batch semantics: `algo.prompts_per_step`, `algo.minibatch_size` and `algo.micro_batch_size` are GLOBAL. Every rank
draws the same global prompt indices from the (identically seeded) sampler and keeps its contiguous slice;
make_experience/update run on the per-rank shapes (`local_algo`: each rank forwards micro_batch_size / world samples
at a time) and DeepSpeed averages gradients, so one optimizer step still sees `minibatch_size` samples. Per-sequence
metrics are averaged over ranks (exact, shards have equal size); throughput is summed, timings take the slowest rank.

Faults: collectives carry `hardware.dist_timeout_s` (gloo on CPU, nccl on CUDA). A rank that dies closes its sockets,
so its peers fail at their next collective at once; a rank that hangs makes its peers fail after the timeout. Either
way the exception ends the process with a non-zero status (torchrun also tears the other workers down).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rlhf.config import AlgoConfig, Config, ConfigError, HardwareConfig

log = logging.getLogger(__name__)

# metrics summed over ranks (throughput) and maxed over ranks (wall time of the slowest rank); the rest are averaged
SUM_KEYS = ("tokens_per_s", "gen_tokens_per_s")
MAX_PREFIXES = ("time/", "step_seconds", "engine_logprob_diff_max")  # the worst rank's figure


def env_world() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) as the launcher left them in the environment; (0, 1, 0) for a plain process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    sub = _submitit_env()
    if sub is not None:
        return sub.global_rank, sub.num_tasks, sub.local_rank
    return 0, 1, 0


def _submitit_env():
    """submitit's JobEnvironment when this process is one task of a multi-task submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit

        env = submitit.JobEnvironment()
    except Exception:  # not inside a submitit job after all
        return None
    return env if env.num_tasks > 1 else None


def _export_submitit_rendezvous() -> None:
    """torch.distributed's env:// rendezvous from a submitit multi-task job (first host is the master)."""
    env = _submitit_env()
    if env is None or "MASTER_ADDR" in os.environ:
        return
    hosts = list(env.hostnames) or ["127.0.0.1"]
    os.environ.update(MASTER_ADDR=hosts[0], MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
                      RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def world_config_errors(cfg: Config, world_size: Optional[int] = None) -> List[str]:
    """Start-up checks that need the world size, as '<key>: ...' lines."""
    world = env_world()[1] if world_size is None else world_size
    hw, a = cfg.hardware, cfg.algo
    errors = []
    if hw.deepspeed_offload and hw.deepspeed_stage == 0:
        errors.append("hardware.deepspeed_offload: needs hardware.deepspeed_stage 2 or 3 (e.g. hardware=zero3_offload)")
    if world > 1 and hw.deepspeed_stage == 0:
        errors.append(f"hardware.deepspeed_stage: {world} processes were launched (WORLD_SIZE={world}) but the "
                      "plain torch path is single-process; use hardware=zero2, zero3 or zero3_offload")
    if hw.deepspeed_stage == 3 and getattr(a, "ref_refresh_steps", 0):
        errors.append("algo.ref_refresh_steps: ZeRO-3 partitions the reference copy, which cannot then be refreshed; "
                      "use hardware.deepspeed_stage 0 or 2")
    if a.prompts_per_step % world:
        errors.append(f"algo.prompts_per_step: {a.prompts_per_step} (global) must be divisible by the world size {world}")
    if a.minibatch_size % world:
        errors.append(f"algo.minibatch_size: {a.minibatch_size} (global) must be divisible by the world size {world}")
    if a.micro_batch_size % world:
        errors.append(f"algo.micro_batch_size: {a.micro_batch_size} (global) must be divisible by the world size "
                      f"{world}")
    return errors


def check_world_config(cfg: Config, world_size: Optional[int] = None) -> None:
    """world_config_errors as a ConfigError (one line per problem)."""
    errors = world_config_errors(cfg, world_size)
    if errors:
        raise ConfigError("\n".join(errors))


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None  # None: no process group (single process, plain torch)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def local_world_size(self) -> int:
        """Processes on this node (torchrun's LOCAL_WORLD_SIZE; the world size when no launcher says)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)) if self.active else 1

    # ------------------------------------------------------------------------------------------------ sharding
    def shard_range(self, n: int) -> Tuple[int, int]:
        """Contiguous slice [lo, hi) of n items for this rank (the last ranks get one fewer when n % world != 0)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def shard(self, items: Sequence[Any]) -> List[Any]:
        lo, hi = self.shard_range(len(items))
        return list(items[lo:hi])

    def local_algo(self, a: AlgoConfig) -> AlgoConfig:
        """The per-rank batch shapes: global prompts_per_step, minibatch_size and micro_batch_size divided by the world
        size."""
        if self.world_size == 1:
            return a
        return replace(a, prompts_per_step=a.prompts_per_step // self.world_size,
                       minibatch_size=a.minibatch_size // self.world_size,
                       micro_batch_size=a.micro_batch_size // self.world_size)

    # --------------------------------------------------------------------------------------------- collectives
    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_true(self, flag: bool | torch.Tensor) -> bool:
        """True when the flag holds on every rank: a rank-local decision (skip this update) made collectively."""
        flag = bool(flag)
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (same shape on every rank), returned on t's device."""
        if not self.active:
            return t
        out = t.detach().to(self._device(), copy=True).contiguous()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.to(t.device)

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks (rank order) of equally shaped tensors."""
        if not self.active:
            return t
        t = t.contiguous().to(self._device())
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        torch.distributed.all_gather(out, t)
        return torch.cat(out).cpu()

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def reduce_metrics(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """Every rank gets the global figures: throughput summed, timings maxed, everything else averaged.

        All ranks must pass the same keys (they run the same code on equally shaped shards)."""
        if not self.active:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self._device())
        gathered = [torch.empty_like(vals) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, vals)
        stacked = torch.stack(gathered).cpu()
        out = dict(metrics)
        for i, k in enumerate(keys):
            col = stacked[:, i]
            if k in SUM_KEYS:
                out[k] = float(col.sum())
            elif k.startswith(MAX_PREFIXES):
                out[k] = float(col.max())
            else:
                out[k] = float(col.mean())
        return out

    def merge_eval(self, summary: Dict[str, Any], examples: List[Any], mean_keys: Sequence[str]):
        """Held-out metrics of the rank shards -> (summary, examples) of the whole split; mean_keys are averaged
        weighted by each shard's n, n is summed."""
        if not self.active:
            return summary, examples
        parts = self.all_gather_object((summary, examples))
        n = sum(p[0]["n"] for p in parts)
        w = [p[0]["n"] / max(n, 1) for p in parts]
        merged = {k: sum(wi * p[0][k] for wi, p in zip(w, parts)) for k in mean_keys}
        return {"n": n, **merged}, [e for p in parts for e in p[1]]

    def close(self) -> None:
        """Orderly end of a successful run (after the last collective)."""
        if self.active and torch.distributed.is_initialized():
            torch.distributed.barrier()
            ds_comm = sys.modules.get("deepspeed.comm")  # loaded only if this run used DeepSpeed
            if ds_comm is not None and ds_comm.is_initialized():
                # through DeepSpeed, so that its cached groups (world clone, data parallel) are dropped with the group
                ds_comm.destroy_process_group()
            else:
                torch.distributed.destroy_process_group()
            self.backend = None


def init_distributed(hw: HardwareConfig) -> DistContext:
    """Process group for DeepSpeed runs (any world size) and multi-process launches; nothing otherwise.

    gloo on CPU (DS_ACCELERATOR=cpu is set before DeepSpeed is imported), nccl on CUDA, with hardware.dist_timeout_s.
    A single DeepSpeed process without a launcher gets a local rendezvous (127.0.0.1, a free port)."""
    _export_submitit_rendezvous()
    rank, world, local_rank = env_world()
    if hw.deepspeed_stage == 0 and world == 1:
        return DistContext()
    cuda = hw.device == "cuda" or (hw.device == "auto" and torch.cuda.is_available())
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if world == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank))
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world,
                                             timeout=datetime.timedelta(seconds=hw.dist_timeout_s))
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend)
    if not ctx.is_main:  # keep warnings and errors of every rank, info only from rank 0
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("rlhf").setLevel(logging.WARNING)
    log.info("process group: %s, world size %d, timeout %.0f s", backend, world, hw.dist_timeout_s)
    return ctx
