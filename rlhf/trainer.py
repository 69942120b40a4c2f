"""The online RL loop: prompts -> rollout -> rewards -> advantages -> update -> weight sync -> metrics/checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from tqdm.auto import tqdm

from rlhf.algo.kl import build_kl_controller
from rlhf.algo.registry import build_algorithm
from rlhf.backend import build_backend, setup_torch
from rlhf.backend.checkpoint import resolve_resume, set_rng_state
from rlhf.backend.distributed import init_distributed
from rlhf.config import Config, as_dict
from rlhf.dataset.sampler import PromptSampler
from rlhf.model.device import resolve_device
from rlhf.model.load import embedded_model_dir, load_causal_lm
from rlhf.model.policy import build_policy, count_parameters
from rlhf.model.shared import ACTOR_ADAPTER
from rlhf.report.io import atomic_write_json, atomic_write_text
from rlhf.report.logger import MetricsLogger, NullLogger, read_metrics
from rlhf.report.run_report import SAMPLES, extreme_samples, write_run_report
from rlhf.report.summary import summary_markdown
from rlhf.report.plots import plot_metrics
from rlhf.reward import build_reward
from rlhf.reward.base import RewardContext
from rlhf.rollout import build_rollout_engine
from rlhf.rollout.base import greedy_replies, sampled_replies, sampling_params
from rlhf.rollout.sampling import concat_rollouts, generate_rollout, mix_seed, select_groups
from rlhf.rollout.weight_sync import named_weights_for_sync
from rlhf.task import build_task

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    pass


class StopTraining(RuntimeError):
    """The run stopped on purpose (e.g. max_bad_steps non-finite steps in a row) after saving a checkpoint."""


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg = cfg
        t_start = time.perf_counter()
        self.phases: Dict[str, float] = {}  # wall seconds per phase, for the closing summary
        self.dist = init_distributed(cfg.hardware)  # a no-op for a plain single process
        # rank 0's dir: under torchrun each rank's Hydra resolves ${now:} on its own
        self.run_dir = Path(self.dist.broadcast_object(str(run_dir)))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        setup_torch(cfg)
        self.device = resolve_device(cfg.hardware)
        model, self.tokenizer = load_causal_lm(cfg.model, cfg.hardware.dtype, seed=cfg.seed)
        # before LoRA is injected: vLLM needs plain base weights (tiny_random saves its random model for it)
        model_dir = self._rollout_model_dir(model) if cfg.hardware.rollout == "vllm" else None
        # the registered algorithm with this rank's batch shapes (prompts_per_step / minibatch_size are global)
        self.algorithm = build_algorithm(self.dist.local_algo(cfg.algo))
        self.policy = build_policy(model, cfg.model, value_head=self.algorithm.needs_critic).to(self.device)
        trainable, total = count_parameters(self.policy.model)
        log.info("policy: %s trainable of %s parameters (%.2f %%)", f"{trainable:,}", f"{total:,}",
                 100 * trainable / max(total, 1))
        self.task = build_task(cfg.dataset)
        self.train_items = self.task.items("train")
        test = self.task.items("test")
        self.test_items = test[: cfg.num_eval] if cfg.num_eval else test
        self.sampler = PromptSampler(len(self.train_items), cfg.seed)
        self.backend = build_backend(cfg, self.policy, self.dist)  # optimizer, schedule, backward, checkpoints
        self.kl_ctl = build_kl_controller(*self.algorithm.kl_settings)
        self.logger = (MetricsLogger(self.run_dir, cfg.logging, as_dict(cfg), name=self.run_dir.name)
                       if self.dist.is_main else NullLogger())
        self.rollout_engine = build_rollout_engine(cfg, self.policy.generation_model(), self.tokenizer, self.device,
                                                   model_dir, world_size=self.dist.world_size,
                                                   local_world_size=self.dist.local_world_size)
        self.phases["setup (model, data, engines)"] = time.perf_counter() - t_start
        t_reward = time.perf_counter()
        ctx = RewardContext(cfg=cfg, tokenizer=self.tokenizer, run_dir=self.run_dir, device=self.device,
                           actor_model=self.policy.model, reference_model=self.policy.ref_model,
                           log=self.logger.log, rollout_engine=self.rollout_engine,
                           sample_policy=self.sample_policy)
        self.reward = build_reward(cfg, ctx)
        trains = cfg.reward.name in ("lora_judge", "bt_rm", "self_reward") and not cfg.reward.checkpoint
        what = "SFT" if cfg.reward.name == "self_reward" else "judge/RM"
        self.phases[f"reward {cfg.reward.name}" + (f" ({what} training)" if trains else "")] = \
            time.perf_counter() - t_reward
        self.step, self.bad_steps = 0, 0
        self.evals: Dict[str, Any] = {}
        self._resume()

    def _rollout_model_dir(self, base_model) -> str:
        """A directory vLLM can load: the hub id/path, the embedded cache, or (tiny_random) the random model saved once.

        Its weights only fix the architecture and the first rollout: the trainer syncs its own after every update."""
        src = self.cfg.model.source
        if src == "hf":
            return self.cfg.model.name_or_path
        if src == "embedded":
            return str(embedded_model_dir(self.cfg.model))
        target = self.run_dir / "rollout_model"
        if self.dist.is_main and not (target / "config.json").is_file():
            base_model.save_pretrained(str(target), safe_serialization=True)
            self.tokenizer.save_pretrained(str(target))
        self.dist.barrier()
        return str(target)

    # ------------------------------------------------------------------------------------------------ state
    def trainer_state(self) -> Dict[str, Any]:
        """What the loop itself must restore; the backend adds weights, optimizer, schedule and RNG."""
        return {"kl_ctl": self.kl_ctl.state_dict(), "sampler": self.sampler.state_dict(),
                "bad_steps": self.bad_steps, "evals": self.evals}

    def _resume(self) -> None:
        ckpt = resolve_resume(self.cfg.resume, self.run_dir)
        if ckpt is None:
            return
        state = self.backend.load(ckpt)  # weights, optimizer (partitions), schedule, this rank's RNG
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.sampler.load_state_dict(state["sampler"])
        self.bad_steps, self.evals, self.step = state["bad_steps"], state.get("evals", {}), state["step"]
        set_rng_state(state["rng"])
        self.algorithm.on_resume(self.policy, self.step)
        self.logger.truncate_after(self.step)
        self._sync_engine()
        if self.step >= self.cfg.steps:
            log.warning("resume: checkpoint %s is at step %d and steps=%d: nothing left to train", ckpt, self.step,
                        self.cfg.steps)
        else:
            log.info("resumed from %s at step %d", ckpt, self.step)

    def save(self) -> Path:
        """Collective in a multi-rank run: every rank calls it."""
        return self.backend.save(self.run_dir, self.step, self.tokenizer, self.trainer_state(),
                                 self.cfg.keep_checkpoints)

    def release(self) -> None:
        """Frees what outlives a run in this process: the vLLM engine's KV cache and weights (Hydra's basic launcher
        runs every job of a multirun in one process, and the next job's engine needs that memory)."""
        shutdown = getattr(self.rollout_engine, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def _sync_engine(self) -> float:
        if self.cfg.hardware.rollout != "vllm":
            return 0.0
        t0 = time.perf_counter()
        # every rank syncs its own engine; under ZeRO-3 from the gathered (full) weights
        with self.backend.gathered():
            if self.cfg.hardware.vllm_lora_sync:  # adapter only: save the actor's adapter, serve it as a LoRA request
                root = self.run_dir / "vllm_lora" / (f"rank{self.dist.rank}" if self.dist.active else "")
                target = root / f"v{self.step:06d}_{time.monotonic_ns()}"
                self.policy.model.save_pretrained(str(target), selected_adapters=[ACTOR_ADAPTER])
                self.rollout_engine.load_lora(str(target))
                for old in root.iterdir():  # the engine has loaded it; older versions are no longer served
                    if old != target:
                        shutil.rmtree(old, ignore_errors=True)
            else:
                self.rollout_engine.load_weights(named_weights_for_sync(self.policy.model))
        return time.perf_counter() - t0

    def _generation(self):
        """The backend's generation context when the policy itself generates (hf); a vLLM engine holds its own
        weights, so ZeRO-3 need not gather the actor for it."""
        return self.backend.generation() if self.cfg.hardware.rollout == "hf" else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------- eval
    def evaluate(self, tag: str) -> Dict[str, Any]:
        """The task's held-out metrics of greedy replies (math: exact match; chat: reward and win rate vs reference)."""
        g = self.cfg.generation
        items = self.dist.shard(self.test_items)  # each rank evaluates its shard of the split
        with torch.no_grad():
            with self._generation():
                prompts = [self.task.prompt_text(self.tokenizer, it) for it in items]
                replies, lengths = greedy_replies(self.rollout_engine, prompts, g.eval_batch_size, g.eval_max_new_tokens,
                                                  self.cfg.logging.progress and self.dist.is_main, f"eval {tag}")
            scorer = self.reward.score_replies if self.task.kind == "chat" else None
            res = self.task.metrics(items, replies, lengths, scorer)
        summary, examples = self.dist.merge_eval(res.summary, res.examples, self.task.mean_keys)
        self.evals[tag] = {**summary, "step": self.step, "examples": examples[:16]}
        self.logger.log(summary, self.step, prefix="eval")
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "eval.json", self.evals)
        log.info("eval %s (step %d) on %d prompts: %s", tag, self.step, summary["n"],
                 ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if k != "n"))
        return summary

    # ------------------------------------------------------------------------------------------------- step
    def _sample(self, items_idx, seed_draw: int):
        """Generate this rank's share of the given global prompt indices and score it: (rollout, scored, seconds of
        generation, seconds of scoring)."""
        cfg, a, g = self.cfg, self.cfg.algo, self.cfg.generation
        lo, hi = self.dist.shard_range(len(items_idx))
        items = [self.train_items[i] for i in items_idx[lo:hi]]
        prompts = [self.task.prompt_text(self.tokenizer, it) for it in items]
        sampling = sampling_params(g, a.samples_per_prompt)
        t0 = time.perf_counter()
        with self._generation():
            rollout = generate_rollout(self.rollout_engine, prompts, sampling, [it.meta for it in items],
                                       seed=cfg.seed, step=seed_draw, rank=self.dist.rank if self.dist.active else None,
                                       first_index=lo,
                                       per_prompt=cfg.hardware.rollout_seed_per_prompt,
                                       pad_id=self.tokenizer.pad_token_id)
        t1 = time.perf_counter()
        scored = self.reward.score(rollout)
        if not self.dist.all_true(torch.isfinite(scored.rewards).all()):
            raise NonFiniteError(f"reward: {int((~torch.isfinite(scored.rewards)).sum())} non-finite rewards")
        return rollout, scored, t1 - t0, time.perf_counter() - t1

    def sample_policy(self, num_prompts: int, samples_each: int) -> List[Tuple[Dict[str, Any], List[str]]]:
        """[(prompt meta, replies)]: the current actor's sampled replies (generation.* settings, the rollout engine)
        to a seeded draw of num_prompts train prompts, in batches of generation.eval_batch_size replies. Every rank
        draws the same prompts and seeds (a judge trained on them is the same on every rank)."""
        g = self.cfg.generation
        idx = random.Random(f"policy_samples|{self.cfg.seed}").sample(range(len(self.train_items)),
                                                                       min(num_prompts, len(self.train_items)))
        items = [self.train_items[i] for i in idx]
        with torch.no_grad(), self._generation():
            replies = sampled_replies(
                self.rollout_engine, [self.task.prompt_text(self.tokenizer, it) for it in items],
                sampling_params(g, samples_each), g.eval_batch_size // samples_each,
                seed_of=lambda start: mix_seed(self.cfg.seed, 0x9011C7, start), meta=[it.meta for it in items],
                progress=self.cfg.logging.progress and self.dist.is_main, desc="judge: policy samples")
        return [(it.meta, r) for it, r in zip(items, replies)]

    def _draw(self) -> int:
        """The rollout seed input of the next prompts: advances with the sampler (also on skipped steps)."""
        return self.sampler.epoch * len(self.train_items) + self.sampler.pos

    def _refill_flat_groups(self, rollout, scores: torch.Tensor, max_rounds: int):
        """Dynamic sampling (DAPO): groups whose scores are all equal are replaced by groups of newly drawn prompts, at
        most max_rounds extra rounds; ranks take every round together. When the rounds run out, flat groups fill the
        rest (their advantage is 0). Returns (rollout, scores, metrics, seconds generating, seconds scoring)."""
        n, a = rollout.group_size, self.cfg.algo
        want = scores.numel() // n

        def live(sc: torch.Tensor) -> torch.Tensor:
            grouped = sc.reshape(-1, n)
            return grouped.amax(1) != grouped.amin(1)

        parts = [(rollout, scores, live(scores))]
        flat = self.dist.all_gather_cat((~parts[0][2]).float())
        metrics = {"filtered_group_frac": float(flat.mean())}
        t_gen = t_rew = 0.0
        rounds = 0
        while rounds < max_rounds and not self.dist.all_true(torch.tensor(sum(int(p[2].sum()) for p in parts) >= want)):
            rounds += 1
            draw = self._draw()
            ro, scored, tg, tr = self._sample(self.sampler.next_indices(a.prompts_per_step), draw)
            sc, _ = self.algorithm.shape_scores(scored.rewards.float(), ro, self.cfg.generation.max_new_tokens)
            parts.append((ro, sc, live(sc)))
            t_gen, t_rew = t_gen + tg, t_rew + tr
        picked_live = [(i, gi) for i, (_, _, lv) in enumerate(parts) for gi in range(lv.numel()) if lv[gi]][:want]
        picked_flat = [(i, gi) for i, (_, _, lv) in enumerate(parts) for gi in range(lv.numel()) if not lv[gi]]
        picked = picked_live + picked_flat[: want - len(picked_live)]
        ros = [select_groups(parts[i][0], [gi for j, gi in picked if j == i]) for i in range(len(parts))]
        scs = [parts[i][1].reshape(-1, n)[[gi for j, gi in picked if j == i]].reshape(-1) for i in range(len(parts))]
        keep = [k for k, r in enumerate(ros) if r.batch_size]
        rollout = concat_rollouts([ros[k] for k in keep], self.tokenizer.pad_token_id)
        metrics.update({"sampling_rounds": float(rounds),
                        "flat_groups_kept": float(self.dist.all_gather_cat(
                            torch.tensor([float(want - len(picked_live))])).sum())})
        return rollout, torch.cat([scs[k] for k in keep]), metrics, t_gen, t_rew

    def train_step(self) -> Dict[str, float]:
        a, g = self.cfg.algo, self.cfg.generation
        t0 = time.perf_counter()
        draw = self._draw()
        rollout, scored, t_gen, t_rew = self._sample(self.sampler.next_indices(a.prompts_per_step), draw)
        first_rollout = rollout
        scores, algo_metrics = self.algorithm.shape_scores(scored.rewards.float(), rollout, g.max_new_tokens)
        max_rounds = self.algorithm.group_filter()
        if max_rounds is not None:
            rollout, scores, refill, tg, tr = self._refill_flat_groups(rollout, scores, max_rounds)
            algo_metrics.update(refill)
            t_gen, t_rew = t_gen + tg, t_rew + tr
        t_scored = time.perf_counter()
        kl_coef = self.kl_ctl.value
        exp, exp_metrics = self.algorithm.make_experience(self.backend.model, rollout, scores, kl_coef,
                                                          g.temperature or 1.0, self.device, self.backend.all_sum)
        t_exp = time.perf_counter()
        upd = self.algorithm.update(self.backend.model, exp, kl_coef, g.temperature or 1.0, self.backend)
        t_upd = time.perf_counter()
        # the global KL, before the controller sees it (measured in the update when the old log-probs were deferred)
        exp_metrics = self.dist.reduce_metrics({**exp_metrics, **getattr(exp, "late_metrics", {})})
        if upd["optimizer_steps"] == 0 and upd["skipped_updates"] > 0:
            raise NonFiniteError(f"update: all {int(upd['skipped_updates'])} minibatches had a non-finite loss or "
                                 "gradient")
        if upd.get("skipped_updates"):
            log.warning("step %d: %d of %d minibatch updates skipped (non-finite loss or gradient)", self.step + 1,
                        int(upd["skipped_updates"]), int(upd["skipped_updates"] + upd["optimizer_steps"]))
        self.kl_ctl.update(exp_metrics.get("kl", float("nan")), a.prompts_per_step * a.samples_per_prompt)
        algo_metrics.update(self.algorithm.after_update(self.policy, self.step + 1))
        t_sync = self._sync_engine()
        gen_tokens = float(rollout.response_mask.sum())
        total = time.perf_counter() - t0
        r = self.dist.all_gather_cat(scored.rewards)  # the global batch's rewards (first sampling round)
        metrics = {
            "reward_mean": float(r.mean()), "reward_std": float(r.std()) if r.numel() > 1 else 0.0,
            **{f"reward/{k}": v for k, v in scored.metrics.items()},
            **exp_metrics, **upd, **{f"algo/{k}": v for k, v in algo_metrics.items()}, "kl_coef": kl_coef,
            "response_length": float(first_rollout.response_lengths.float().mean()),
            "finished_frac": (float(first_rollout.finished.float().mean()) if first_rollout.finished is not None
                              else 1.0),
            "lr": self.backend.lr,
            "tokens_per_s": gen_tokens / total, "gen_tokens_per_s": gen_tokens / max(t_gen, 1e-9),
            "step_seconds": total, "time/generate": t_gen, "time/reward": t_rew,
            "time/experience": t_exp - t_scored, "time/update": t_upd - t_exp, "time/sync": t_sync,
        }
        last_sync = getattr(self.rollout_engine, "last_sync", None) or {}
        if "bytes" in last_sync:
            metrics["sync_bytes"] = float(last_sync["bytes"])
        verify_s = last_sync.get("verify_seconds")
        if self.cfg.hardware.rollout == "vllm" and verify_s is not None:
            metrics["time/sync_verify"] = float(verify_s)  # part of time/sync: the read-back check
        if self.dist.is_main:  # the step's best and worst reply, for report.md
            metas = first_rollout.meta_per_sample()  # the item's plain prompt, not its chat-template rendering
            prompts = [str((metas[i] if i < len(metas) else {}).get("judge_prompt")
                           or first_rollout.prompts[first_rollout.prompt_index(i)])
                       for i in range(first_rollout.batch_size)]
            with open(self.run_dir / SAMPLES, "a") as f:
                for row in extreme_samples(prompts, first_rollout.responses, scored.rewards.float().tolist(),
                                           self.step + 1):
                    f.write(json.dumps(row) + "\n")
        for key in ("em_strict", "em_flexible"):
            if f"reward/{key}" in metrics:
                metrics[key] = metrics[f"reward/{key}"]
        if scored.correct is not None and "em_flexible" not in metrics:
            metrics["em_flexible"] = float(scored.correct.float().mean())
        return self.dist.reduce_metrics(metrics)

    # ------------------------------------------------------------------------------------------------- loop
    def train(self) -> Dict[str, Any]:
        cfg = self.cfg
        if self.step >= cfg.steps:  # resumed at or past the last step: nothing to do, keep the run's outputs
            prev = self.run_dir / "summary.json"
            self.logger.close()
            return json.loads(prev.read_text()) if prev.is_file() else {"step": self.step, "final": {}}
        t0 = time.perf_counter()
        if self.step == 0 and cfg.eval_before and "before" not in self.evals:
            self.evaluate("before")
        self.phases["held-out eval before"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # under a time budget the bar counts training seconds (the step cap is rarely what ends such a run)
        timed = bool(cfg.max_train_seconds)
        bar = tqdm(total=round(cfg.max_train_seconds) if timed else cfg.steps, initial=0 if timed else self.step,
                   unit="s" if timed else "it", desc=f"{cfg.algo.name}",
                   disable=not cfg.logging.progress or not self.dist.is_main)
        last: Dict[str, float] = {}
        while self.step < cfg.steps:
            try:
                last = self.train_step()
                self.bad_steps = 0
            except NonFiniteError as e:
                self.bad_steps += 1
                log.warning("step %d skipped (%d in a row): %s", self.step + 1, self.bad_steps, e)
                if self.bad_steps >= cfg.max_bad_steps:
                    self.save()
                    raise StopTraining(f"stopping after {self.bad_steps} consecutive non-finite steps; last cause: "
                                       f"{e}; checkpoint saved at step {self.step}") from e
                continue
            self.step += 1
            self.logger.log(last, self.step)
            bar.update(min(round(time.perf_counter() - t0), bar.total) - bar.n if timed else 1)
            bar.set_postfix(**({"step": f"{self.step}/{cfg.steps}"} if timed else {}),
                            reward=f"{last['reward_mean']:.3f}", kl=f"{last.get('kl', float('nan')):.3f}",
                            em=f"{last.get('em_flexible', float('nan')):.2f}", s=f"{last['step_seconds']:.1f}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self.evaluate(f"step_{self.step}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            if cfg.max_train_seconds and self.step < cfg.steps and self._budget_spent(t0):
                log.info("time budget: %.0f s of training reached after step %d of %d", cfg.max_train_seconds,
                         self.step, cfg.steps)
                break
        bar.close()
        self.phases[f"training ({self.step} steps)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.eval_after and "after" not in self.evals:
            self.evaluate("after")
        self.phases["held-out eval after"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ckpt = self.save()
        self.phases["checkpoint"] = time.perf_counter() - t0
        if cfg.logging.plots and self.dist.is_main:
            plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "plots.png")
        self.logger.close()
        summary = {"step": self.step, "checkpoint": str(ckpt), "task": self.task.kind, "final": last,
                   "judge": {"heldout_accuracy": getattr(self.reward, "heldout_accuracy", None)},
                   "wall_seconds": {**self.phases, "total": sum(self.phases.values())},
                   **{f"eval_{k}": {kk: vv for kk, vv in v.items() if kk not in ("examples", "step")}
                      for k, v in self.evals.items() if k in ("before", "after")}}
        if self.dist.is_main:
            atomic_write_json(self.run_dir / "summary.json", summary)
            self._write_summary_md(ckpt)
            write_run_report(self.run_dir)
        return summary

    def _budget_spent(self, t0: float) -> bool:
        """Whether max_train_seconds is spent; rank 0's clock decides for every rank (they must stop together)."""
        return bool(self.dist.broadcast_object(time.perf_counter() - t0 >= self.cfg.max_train_seconds))

    def _write_summary_md(self, ckpt: Path) -> None:
        """summary.md in the run dir, and the same tables on the terminal."""
        rows = [r for r in read_metrics(self.run_dir / "metrics.jsonl") if "reward_mean" in r and "phase" not in r]
        paths = {"run dir": str(self.run_dir), "metrics": str(self.run_dir / "metrics.jsonl"),
                 "held-out replies": str(self.run_dir / "eval.json"), "checkpoint": str(ckpt)}
        if (self.run_dir / "plots.png").is_file():
            paths["plots"] = str(self.run_dir / "plots.png")
        paths["this summary"] = str(self.run_dir / "summary.md")
        paths["report (curves, best/worst replies)"] = str(self.run_dir / "report.md")
        extra = dict(getattr(self.reward, "summary", {}) or {})
        m = self.cfg.model
        title = (f"{self.cfg.algo.name} on {self.cfg.dataset.name} with reward={self.cfg.reward.name}, model "
                 f"{m.name_or_path if m.source != 'tiny_random' else 'tiny_random'}, seed {self.cfg.seed}")
        md = summary_markdown(self.evals, rows, self.phases, paths, title, extra)
        atomic_write_text(self.run_dir / "summary.md", md)
        if self.cfg.logging.progress:
            print("\n" + md, flush=True)
