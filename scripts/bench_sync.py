"""Weight sync into vLLM for a LoRA actor on the embedded SmolLM2-135M: merged full sync (with and without the
read-back check) against adapter-only sync through vLLM's LoRA support. Prints one JSON object.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_sync.py

Knobs (environment variables): RLHF_BENCH_SYNC_REPEATS (5), RLHF_BENCH_LORA_R (16). Each repeat perturbs the
adapter (as an update would) before syncing, so nothing is served from a cache; the greedy replies after each kind of
sync are compared with the trainer's own, so a sync that did not arrive shows.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from rlhf.config import HardwareConfig, ModelConfig  # noqa: E402
from rlhf.model.load import embedded_model_dir, load_causal_lm  # noqa: E402
from rlhf.rollout.base import SamplingParams  # noqa: E402
from rlhf.rollout.hf_engine import HFEngine  # noqa: E402
from rlhf.rollout.vllm_engine import VLLMEngine  # noqa: E402
from rlhf.rollout.weight_sync import named_weights_for_sync  # noqa: E402

REPEATS = int(os.environ.get("RLHF_BENCH_SYNC_REPEATS", "5"))
RANK = int(os.environ.get("RLHF_BENCH_LORA_R", "16"))


def perturb(peft: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def main() -> Dict[str, Any]:
    cfg = ModelConfig()
    model, tok = load_causal_lm(cfg)
    peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model_dir = str(embedded_model_dir(cfg))
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {a + 3}?"}], tokenize=False,
                                       add_generation_prompt=True) for a in range(4)]
    sp = SamplingParams(max_new_tokens=16, temperature=0.0)
    hf = HFEngine(peft, tok, torch.device("cpu"), 256)
    gen = torch.Generator().manual_seed(0)
    out: Dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                       "loadavg": [round(x, 2) for x in os.getloadavg()]},
                           "params": sum(p.numel() for p in model.parameters()), "lora_rank": RANK,
                           "repeats": REPEATS}
    for mode in ("merged", "merged_verified", "adapter"):
        hw = HardwareConfig(rollout="vllm", vllm_verify_sync=(mode == "merged_verified"),
                            vllm_lora_sync=(mode == "adapter"))
        extra = {"enable_lora": True, "max_lora_rank": max(8, RANK), "max_loras": 1} if mode == "adapter" else None
        eng = VLLMEngine(model_dir, tok, hw, max_model_len=256, seed=0, dtype="float32", extra_llm_kwargs=extra)
        secs, nbytes, agree = [], 0, True
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(REPEATS):
                perturb(peft, gen)
                t0 = time.perf_counter()
                if mode == "adapter":
                    target = Path(tmp) / f"v{k}"
                    peft.save_pretrained(str(target))
                    eng.load_lora(str(target))
                    nbytes = eng.last_sync["bytes"]
                else:
                    weights = list(named_weights_for_sync(peft))
                    eng.load_weights(weights)
                    nbytes = sum(t.numel() * t.element_size() for _, t in weights)
                secs.append(time.perf_counter() - t0)
                agree &= eng.generate(prompts, sp).responses == hf.generate(prompts, sp).responses
        out[mode] = {"seconds_median": round(statistics.median(secs), 3), "seconds": [round(s, 3) for s in secs],
                     "bytes": nbytes, "greedy_replies_match_trainer": agree,
                     **({"verify_seconds": round(eng.last_sync.get("verify_seconds", 0.0), 3)}
                        if mode == "merged_verified" else {})}
        eng.shutdown()
        del eng
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
