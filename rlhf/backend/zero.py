"""DeepSpeed ZeRO-2 / ZeRO-3 (optionally CPU offload) for the policy and its value head.

What DeepSpeed wraps is the whole Policy (actor, frozen reference copy, value head): ZeRO-3 therefore partitions the
reference too and gathers it in its forward. The optimizer is DeepSpeed's AdamW (betas 0.9/0.95, eps 1e-8, the
actor/critic learning rates as param groups; `torch_adam`, so no op has to be compiled), the warmup schedule is
the plain path's LambdaLR on DeepSpeed's inner optimizer, stepped only when DeepSpeed applied the step. DeepSpeed
clips (`gradient_clipping` = algo.max_grad_norm) and skips a step whose global gradient norm is not finite.

rlhf.algo.step.update drives this backend like the plain one (rlhf/backend/base.py): forward through the engine,
engine.backward, a step that reports DeepSpeed's global grad norm (None when DeepSpeed skipped it), and a collective
"all ranks finite" check so that a non-finite loss on one rank skips the minibatch on every rank (a lone rank skipping
would leave its peers waiting in a collective).

Gradient accumulation (algo.micro_batch_size < minibatch_size): DeepSpeed's gradient_accumulation_steps stays 1, so
engine.backward does not rescale the loss; update() passes each micro-batch's loss already weighted by its share of
the minibatch, sets the accumulation boundary explicitly (engine.set_gradient_accumulation_boundary: False before
every backward but the minibatch's last, True before the last, so ZeRO accumulates into its gradient partitions and
finalises them only then) and calls engine.step() once per minibatch, after the last backward. A non-finite loss in a
later micro-batch must drop what ZeRO already accumulated in its own buffers, which only its overflow path clears:
`_discard` backpropagates a NaN gradient at a boundary and lets engine.step() skip and clear (on every rank).

Generation under ZeRO-3 (`generation`): the actor's parameters are gathered once (GatheredParameters) and the
ZeRO-3 module hooks are taken off while transformers `generate` runs, so ranks may run different numbers of forward
passes (different reply lengths) without collectives; the hooks are put back afterwards. The context is entered by
every rank the same number of times (once per rollout, once per evaluation).

Checkpoints keep the single-process layout (model/ or adapter/, value_head.safetensors, trainer_state.json +
.safetensors, COMPLETE), written by rank 0 from gathered weights, so `rlhf.evaluate checkpoint=...` and a plain resume
read them unchanged; the optimizer partitions are DeepSpeed's own save_checkpoint in deepspeed/ inside the same atomic
directory, and every rank saves its RNG state as rng_rank<r>.json + .safetensors (rlhf.backend.checkpoint.save_state:
no pickle). Loading is never unrestricted. DeepSpeed's checkpoint engine (and a few of its paths directly) would
read its .pt files with torch's full, code-running unpickler; on resume both that engine's load and torch.load itself
are replaced by torch.load(weights_only=True) (torch's restricted unpickler plus the few DeepSpeed data classes its
files hold: `restricted_checkpoint_loads`), whatever the caller asks for. A checkpoint from elsewhere cannot run code.
Before that, every pickle under deepspeed/ is scanned (rlhf.backend.safe_pickle, nothing executed), so a file naming
anything outside the allow-list is refused up front, by name.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import importlib
import logging
import math
import pickle
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional

import torch
import torch.nn as nn

from rlhf.backend.base import TrainingBackend, optimizer_groups, warmup_schedule
from rlhf.backend.checkpoint import (
    TRAINER_STATE,
    checkpoint_root,
    finalize_checkpoint,
    load_state,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_state,
    write_model_files,
)
from rlhf.backend.distributed import DistContext
from rlhf.backend.safe_pickle import DEEPSPEED_GLOBALS, UnsafePickleError, check_torch_dir
from rlhf.config import Config
from rlhf.model.policy import Policy
from rlhf.report.io import atomic_write_json

log = logging.getLogger(__name__)
DS_TAG = "zero"


def deep_merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def deepspeed_config(cfg: Config, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed JSON config from the run config (hardware.deepspeed_config is merged over it last)."""
    hw, a = cfg.hardware, cfg.algo
    cpu = hw.device == "cpu" or (hw.device == "auto" and not torch.cuda.is_available())
    zero: Dict[str, Any] = {"stage": hw.deepspeed_stage}
    if hw.deepspeed_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": not cpu}
        if hw.deepspeed_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": not cpu}
    ds: Dict[str, Any] = {
        "train_batch_size": a.minibatch_size,  # global samples per optimizer step
        "train_micro_batch_size_per_gpu": a.minibatch_size // world_size,
        # 1 also with algo.micro_batch_size: update() weights the micro-batch losses and sets the boundary itself
        "gradient_accumulation_steps": 1,
        "gradient_clipping": a.max_grad_norm,  # 0 disables, as in the plain path
        "zero_optimization": zero,
        "bf16": {"enabled": hw.dtype == "bfloat16"},
        "fp16": {"enabled": hw.dtype == "float16"},
        "optimizer": {"type": "AdamW", "params": {
            "lr": a.lr, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": a.weight_decay,
            # torch's AdamW everywhere: nothing to JIT-compile (FusedAdam / DeepSpeedCPUAdam need a compiler and, on
            # GPU, nvcc). Where those build, set hardware.deepspeed_config.optimizer.params.torch_adam=false.
            "torch_adam": True,
        }},
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return deep_merge(ds, dict(hw.deepspeed_config or {}))


class _Out(NamedTuple):
    """PolicyOutput as a tuple (DeepSpeed hooks the tensors of tuple outputs to run its backward prologue)."""

    logprobs: torch.Tensor
    entropy: Optional[torch.Tensor]
    values: Optional[torch.Tensor]


def timed_world_group_clone(world_size: int, timeout_s: float) -> None:
    """DeepSpeed reduces gradients over its own clone of the world group, which it creates with torch's default
    timeout (30 minutes) rather than the world group's: a hung peer would hold the other ranks there for half an
    hour. Creating that clone first, with hardware.dist_timeout_s, makes DeepSpeed's collectives fail in time too."""
    from deepspeed.utils import groups

    if not hasattr(groups, "_WORLD_GROUP"):
        log.warning("this DeepSpeed has no groups._WORLD_GROUP: its collectives keep torch's default timeout")
        return
    if groups._WORLD_GROUP is None:
        groups._WORLD_GROUP = torch.distributed.new_group(ranks=list(range(world_size)),
                                                          timeout=datetime.timedelta(seconds=timeout_s))


class EngineModule(nn.Module):
    """The module handed to deepspeed.initialize: the policy, with a dict output and ref_logprobs passed through."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, *args, **kwargs) -> _Out:
        out = self.policy(*args, **kwargs)
        return _Out(out.logprobs, out.entropy, out.values)

    def ref_logprobs(self, *args, **kwargs) -> torch.Tensor:
        return self.policy.ref_logprobs(*args, **kwargs)


class DeepSpeedBackend(TrainingBackend):
    def __init__(self, cfg: Config, policy: Policy, dist: DistContext):
        import deepspeed

        self.cfg, self.policy, self.dist = cfg, policy, dist
        self.stage = cfg.hardware.deepspeed_stage
        self.all_sum, self.world_size = dist.all_sum, dist.world_size
        self.ds_config = deepspeed_config(cfg, dist.world_size)
        self.module = EngineModule(policy)
        timed_world_group_clone(dist.world_size, cfg.hardware.dist_timeout_s)
        self.ds_engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.module, model_parameters=optimizer_groups(policy, cfg.algo), config=self.ds_config)
        inner = getattr(self.ds_engine, "basic_optimizer", None) or self.optimizer.optimizer
        self.scheduler = warmup_schedule(inner, cfg.algo.warmup_steps)
        log.info("DeepSpeed ZeRO-%d%s, world size %d, %s", self.stage, " + CPU offload" if cfg.hardware.deepspeed_offload
                 else "", dist.world_size, cfg.hardware.dtype)

    @property
    def model(self) -> Any:
        return self.ds_engine

    # ---------------------------------------------------------------------------------------------- update
    def step(self) -> Optional[float]:
        """DeepSpeed clips and skips a step whose global gradient norm is not finite; the schedule follows only the
        steps it applied."""
        self.ds_engine.step()
        norm = self.ds_engine.get_global_grad_norm()
        applied = self.ds_engine.was_step_applied() if hasattr(self.ds_engine, "was_step_applied") else True
        if applied and norm is not None and math.isfinite(float(norm)):
            self.scheduler.step()
            return float(norm)
        return None

    def backward(self, loss: torch.Tensor, accumulate: bool, is_last: bool) -> None:
        if accumulate:  # ZeRO accumulates into its partitions and finalises them only at the boundary
            self.ds_engine.set_gradient_accumulation_boundary(is_last)
        self.ds_engine.backward(loss)

    def all_finite(self, t: torch.Tensor) -> bool:
        """Collective: a non-finite loss on one rank skips the minibatch on every rank (a lone rank skipping would
        leave its peers waiting in a collective)."""
        return self.dist.all_true(torch.isfinite(t).all())

    def discard(self, loss: torch.Tensor) -> None:
        """Drop this minibatch's gradients accumulated so far (a later micro-batch's loss was not finite on some rank,
        every rank calls this): a NaN gradient reduced at a boundary makes DeepSpeed's step see a non-finite norm, skip
        the update and clear its partitions and accumulation state."""
        self.ds_engine.set_gradient_accumulation_boundary(True)
        self.ds_engine.backward(loss * float("nan"))
        self.ds_engine.step()
        if self.ds_engine.was_step_applied():
            raise RuntimeError("DeepSpeed applied a step with a NaN gradient (zero_optimization.compute_grad_norm=false"
                               " or bf16.check_grad_overflow=false disable its check); a non-finite micro-batch loss "
                               "cannot be skipped safely with them")

    # ------------------------------------------------------------------------------------------ generation
    @contextlib.contextmanager
    def generation(self) -> Iterator[None]:
        """ZeRO-3: full actor weights on every rank and no module hooks while generating; a no-op for ZeRO-2."""
        if self.stage != 3:
            yield
            return
        import deepspeed

        offload = self.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(list(self.policy.model.parameters()), modifier_rank=None):
            for h in offload.forward_hooks + offload.backward_hooks:
                h.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield
            finally:
                offload._register_deepspeed_module(offload.module)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Full (unpartitioned) actor and value-head weights inside the block under ZeRO-3 (read-only)."""
        if self.stage != 3:
            yield
            return
        import deepspeed

        params = list(self.policy.model.parameters())
        if self.policy.value_head is not None:
            params += list(self.policy.value_head.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield

    # ------------------------------------------------------------------------------------------ checkpoints
    def _meta(self) -> Dict[str, Any]:
        return {"zero_stage": self.stage, "world_size": self.dist.world_size, "tag": DS_TAG}

    def save(self, run_dir: Path, step: int, tokenizer, trainer_state: Dict[str, Any], keep: int) -> Path:
        """Collective: every rank must call it. The plain layout plus deepspeed/ and rng_rank<r>.json/.safetensors."""
        policy = self.policy
        root = checkpoint_root(run_dir)
        final = root / f"step_{step:06d}"
        tmp = root / f".tmp-step_{step:06d}-ds"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        try:
            self.ds_engine.save_checkpoint(str(tmp / "deepspeed"), tag=DS_TAG, save_latest=False,
                                        exclude_frozen_parameters=True)
            save_state(tmp, f"rng_rank{self.dist.rank}", rng_state())
            model_state = vh_state = None
            with self.gathered():
                digest = weights_digest(policy)
                if self.dist.is_main and self.stage == 3:
                    model_state = _cpu_copy(policy.model.state_dict())
                    if policy.value_head is not None:
                        vh_state = _cpu_copy(policy.value_head.state_dict())
            digests = self.dist.all_gather_object(digest)
            if len(set(digests)) != 1:
                log.error("checkpoint step %d: the ranks hold different weights (sha256 per rank: %s)", step, digests)
            if self.dist.is_main:
                write_model_files(tmp, policy, tokenizer, model_state, vh_state)
                atomic_write_json(tmp / "ranks.json", {**self._meta(), "weights_sha256": digests,
                                                       "consistent": len(set(digests)) == 1})
                state = {**trainer_state, "optimizer": None, "scheduler": self.scheduler.state_dict(), "step": step,
                         "rng": rng_state(), "deepspeed": self._meta()}
                save_state(tmp, TRAINER_STATE, state)
            self.dist.barrier()
            if self.dist.is_main:
                finalize_checkpoint(tmp, final, step)
                prune_checkpoints(run_dir, keep)
        except BaseException:
            if self.dist.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.dist.barrier()
        return final

    def load(self, ckpt: Path) -> Dict[str, Any]:
        """Weights + optimizer partitions (DeepSpeed), the schedule and this rank's RNG; returns the trainer state."""
        state = load_trainer_state(ckpt)
        meta = state.get("deepspeed")
        if meta is None or not (ckpt / "deepspeed").is_dir():
            raise ValueError(f"resume: {ckpt} was written without DeepSpeed; resume it with hardware.deepspeed_stage=0 "
                             "(the optimizer state is not convertible)")
        if meta["zero_stage"] != self.stage or meta["world_size"] != self.dist.world_size:
            raise ValueError(f"resume: {ckpt} holds ZeRO-{meta['zero_stage']} partitions for world size "
                             f"{meta['world_size']}; this run is ZeRO-{self.stage} with world size {self.dist.world_size}")
        if meta.get("tag", DS_TAG) != DS_TAG:  # a tag like ../../x would make DeepSpeed load files outside deepspeed/
            raise ValueError(f"resume: {ckpt}: unexpected DeepSpeed tag {meta.get('tag')!r} (this version writes "
                             f"{DS_TAG!r})")
        try:  # refuse early, by name, any file that references something outside the allow-list (nothing is run)
            check_torch_dir(ckpt / "deepspeed")
        except UnsafePickleError as e:
            raise ValueError(f"resume: {e}") from None
        with restricted_checkpoint_loads(self.ds_engine):
            path, _ = self.ds_engine.load_checkpoint(str(ckpt / "deepspeed"), tag=DS_TAG,
                                                     load_module_strict=False, load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"resume: DeepSpeed could not load {ckpt / 'deepspeed'}")
        stem = f"rng_rank{self.dist.rank}"
        if (ckpt / f"{stem}.json").is_file():
            try:
                state["rng"] = load_state(ckpt, stem)
            except (FileNotFoundError, ValueError) as e:
                raise type(e)(f"resume: {e}") from None
        state.pop("optimizer", None)
        self.scheduler.load_state_dict(state.pop("scheduler"))
        return state


@contextlib.contextmanager
def restricted_checkpoint_loads(ds_engine: Any) -> Iterator[None]:
    """Every file DeepSpeed loads in the block goes through torch.load(weights_only=True), torch's restricted
    unpickler, with only the DeepSpeed classes of the allow-list added. DeepSpeed's own checkpoint engine asks for
    the full (code-running) unpickler, and some of its paths (universal checkpoints, ZeRO-3 optimizer state) call
    torch.load with it directly, so both the engine's load and torch.load itself are replaced for the duration and
    any weights_only argument is overridden: a crafted file cannot build anything else, whichever path reads it. (The opcode scan before it
    refuses such a file early, with the offending name.)"""
    engine = ds_engine.checkpoint_engine
    original_engine_load, original_torch_load = engine.load, torch.load
    extra = [getattr(importlib.import_module(module), name) for module, name in sorted(DEEPSPEED_GLOBALS)]

    def load(path: Any, map_location=None, *args: Any, **kwargs: Any):
        kwargs.pop("weights_only", None)  # whatever the caller asked for: restricted
        try:
            with torch.serialization.safe_globals(extra):
                return original_torch_load(path, map_location=map_location, *args, weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            first = (str(e).strip().splitlines() or ["?"])[0][:200]
            raise ValueError(f"resume: {path} refused by the restricted unpickler ({first})") from None

    engine.load, torch.load = load, load
    try:
        yield
    finally:
        engine.load, torch.load = original_engine_load, original_torch_load


def weights_digest(policy: Policy) -> str:
    """sha256 over this rank's view of the trainable weights (actor + value head), in state-dict order."""
    h = hashlib.sha256()
    parts = [policy.model.state_dict()] + ([policy.value_head.state_dict()] if policy.value_head is not None else [])
    for state in parts:
        for k, v in state.items():
            h.update(k.encode())
            h.update(v.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cpu_copy(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Detached CPU copies that keep tied entries tied (so save_pretrained drops them as in the plain path)."""
    seen: Dict[int, torch.Tensor] = {}
    out = {}
    for k, v in state.items():
        key = v.data_ptr()
        if key not in seen:
            seen[key] = v.detach().to("cpu", copy=True)
        out[k] = seen[key]
    return out

