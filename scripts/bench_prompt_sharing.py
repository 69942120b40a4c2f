"""`python scripts/bench_prompt_sharing.py`: one update-sized forward+backward and one no-grad forward of the policy
with model.share_prompts off and on (twice each, interleaved), on the embedded SmolLM2-135M-Instruct with a rank-16
LoRA: 8 rows of a 61-token prompt and 64 reply tokens, as in the GRPO bench. Two layouts: the rows of a random
minibatch of 4 prompts x 4 samples (4 distinct prompts in 8 rows) and whole prompts (algo.minibatch_by=prompt: 2 in
8). Prints seconds per pass; README's Speed section quotes one run on the idle 2-core machine."""

from __future__ import annotations

import time

import torch

from rlhf.config import LoraConfig, ModelConfig
from rlhf.model.load import load_causal_lm
from rlhf.model.policy import build_policy

PROMPT, REPLY = 61, 64
LAYOUTS = {"random minibatch (4 prompts in 8 rows)": [0, 0, 1, 1, 2, 3, 3, 2],
           "whole prompts (2 prompts in 8 rows)": [0, 0, 0, 0, 1, 1, 1, 1]}


def main() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(source="embedded", lora=LoraConfig(enabled=True, r=16, alpha=32, dropout=0.0))
    model, _ = load_causal_lm(cfg, seed=0)
    policy = build_policy(model, cfg, value_head=False)
    prompts = torch.randint(100, 40000, (4, PROMPT))
    for name, rows in LAYOUTS.items():
        ids = torch.cat([prompts[torch.tensor(rows)], torch.randint(100, 40000, (len(rows), REPLY))], dim=1)
        att = torch.ones_like(ids)
        for share in (False, True, False, True):
            policy.share_prompts = share
            t = time.perf_counter()
            out = policy(ids, att, PROMPT, 0.7, want_entropy=True)
            out.logprobs.sum().backward()
            fwd_bwd = time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad():
                policy(ids, att, PROMPT, 0.7, want_entropy=False)
            print(f"{name}, share_prompts={share}: fwd+bwd {fwd_bwd:.2f} s, no-grad forward "
                  f"{time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main()
