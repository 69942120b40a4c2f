"""Weight-sync seconds per 1B parameters into a colocated vLLM engine, for models larger than the embedded one.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python scripts/gpu_sync_bench.py OUT.json

Builds randomly initialised models from a config (Qwen2.5-0.5B and -1.5B shapes; GPU_SYNC_SHAPES picks, e.g.
"0.5b"), saves each once as bf16 safetensors, starts rlhf's VLLMEngine on it (the same class the trainer uses), and
pushes the trainer-side weights (on the GPU, perturbed before every push so nothing is a no-op) GPU_SYNC_REPEATS
times, with and without the read-back check. On the CPU (rehearsal) a tiny Qwen2 shape runs instead.
Prints and writes one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.config import HardwareConfig  # noqa: E402
from rlhf.model.load import embedded_model_dir  # noqa: E402
from rlhf.rollout.vllm_engine import VLLMEngine  # noqa: E402

# Qwen2.5 config.json values (hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings)
SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True),
}


def build(shape: str, target: Path, tok) -> int:
    cfg = Qwen2Config(**SHAPES[shape], max_position_embeddings=4096, rope_theta=1e6, torch_dtype="bfloat16",
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(), torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.manual_seed(0)  # initialised on the GPU: a 1.5B init took 56 s on the H200 machine's CPU
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    return n


def measure(shape: str, work: Path, repeats: int) -> Dict[str, Any]:
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    target = work / f"qwen2_{shape}_random"
    t = time.perf_counter()
    params = build(shape, target, tok)
    build_s = time.perf_counter() - t
    hw = HardwareConfig(device="cuda" if cuda else "cpu", dtype="bfloat16" if cuda else "float32", rollout="vllm",
                        vllm_gpu_memory_utilization=0.2)
    # a small fixed KV cache: the sync is what is measured; eager: no compile time for nothing
    engine = VLLMEngine(str(target), tok, hw, max_model_len=512, seed=0, dtype=hw.dtype, enforce_eager=True,
                        extra_llm_kwargs={"kv_cache_memory_bytes": (2 << 30) if cuda else (256 << 20)})
    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.bfloat16 if cuda else torch.float32)
    model.to("cuda" if cuda else "cpu")
    out: Dict[str, Any] = {"shape": shape, "params": params, "build_s": round(build_s, 1),
                           "engine_init_s": round(engine.init_seconds, 1)}
    for verify in (False, True):
        engine.hardware.vllm_verify_sync = verify
        times = []
        for i in range(repeats + 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            engine.load_weights(model.named_parameters())
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first push warms up
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        key = "verified" if verify else "plain"
        out[key] = {"median_s": round(med, 4), "all_s": [round(x, 4) for x in times],
                    "s_per_1b_params": round(med / (params / 1e9), 4)}
    engine.shutdown()
    del model, engine
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "outputs" / "gpu_sync.json"
    work = out_path.parent / "sync_models"
    work.mkdir(parents=True, exist_ok=True)
    default = "0.5b,1.5b" if torch.cuda.is_available() else "tiny"
    shapes = [s.strip() for s in os.environ.get("GPU_SYNC_SHAPES", default).split(",") if s.strip()]
    repeats = int(os.environ.get("GPU_SYNC_REPEATS", "5"))
    result: Dict[str, Any] = {"repeats": repeats, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                              else "cpu", "runs": []}
    for shape in shapes:
        if len(shapes) == 1:
            result["runs"].append(measure(shape, work, repeats))
        else:  # one process per shape: a second in-process vLLM engine after a shutdown is not something to rely on
            part = work / f"{shape}.json"
            part.unlink(missing_ok=True)
            subprocess.run([sys.executable, __file__, str(part)], env={**os.environ, "GPU_SYNC_SHAPES": shape})
            result["runs"] += json.loads(part.read_text())["runs"] if part.is_file() else [{"shape": shape,
                                                                                           "error": "no result"}]
        out_path.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["runs"][-1]), flush=True)


if __name__ == "__main__":
    main()
