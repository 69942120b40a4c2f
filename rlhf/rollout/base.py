"""The rollout engine interface and the `Rollout` batch that carries one step's samples between components."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Set, Tuple

import torch
from tqdm.auto import tqdm


@dataclass
class SamplingParams:
    max_new_tokens: int = 96
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    n: int = 1  # samples per prompt
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling_params(generation: Any, n: int) -> SamplingParams:
    """The sampling settings of the run's generation.* keys (GenerationConfig) with n samples per prompt."""
    g = generation
    return SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                          n=n, stop=list(g.stop))


@dataclass
class Rollout:
    """B = num_prompts * n sequences, sample j of prompt i at row i * n + j.

    ``input_ids`` holds [left-padded prompt | right-padded response] with width P + R; ``attention_mask`` marks real
    tokens; ``response_mask`` (B, R) marks response tokens up to and including EOS (or the stop string).
    """

    input_ids: torch.Tensor  # (B, P + R) long
    attention_mask: torch.Tensor  # (B, P + R) long
    response_mask: torch.Tensor  # (B, R) float
    prompt_len: int  # P
    prompts: List[str]  # num_prompts chat-formatted prompt strings
    responses: List[str]  # B decoded responses (stop strings kept, special tokens removed)
    group_size: int  # n
    engine_logprobs: Optional[torch.Tensor] = None  # (B, R) sampling log-probs reported by the engine, if any
    meta: List[Dict[str, Any]] = field(default_factory=list)  # per prompt (e.g. the reference answer)
    finished: Optional[torch.Tensor] = None  # (B,) bool: ended with EOS/stop rather than the length limit

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len:]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def prompt_index(self, row: int) -> int:
        return row // self.group_size

    def meta_per_sample(self) -> List[Dict[str, Any]]:
        return [self.meta[self.prompt_index(i)] for i in range(self.batch_size)] if self.meta else [{}] * self.batch_size


def eos_token_ids(generation_eos: Any, tokenizer) -> Set[int]:
    """Token ids that end a reply: the model's generation_config.eos_token_id (an id or a list) plus the tokenizer's
    EOS. Both rollout engines stop on this same set."""
    ids: Set[int] = set()
    for value in (generation_eos, tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


class RolloutEngine(Protocol):
    """What the trainer needs from a generator. Implementations: hf (transformers generate), vllm."""

    def generate(self, prompts: List[str], sampling: SamplingParams, meta: Optional[List[Dict[str, Any]]] = None) -> Rollout:
        ...

    def load_weights(self, named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Push the trainer's current (merged) weights; must fail loudly if a weight cannot be applied."""
        ...


def greedy_replies(engine: RolloutEngine, prompts: List[str], batch_size: int, max_new_tokens: int,
                   progress: bool = False, desc: str = "eval") -> Tuple[List[str], List[float]]:
    """Greedy replies to rendered prompts in batches, with their lengths in tokens (held-out evaluation)."""
    replies: List[str] = []
    lengths: List[float] = []
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, n=1)
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        rollout = engine.generate(prompts[start: start + batch_size], sampling)
        replies.extend(rollout.responses)
        lengths.extend(float(x) for x in rollout.response_lengths.tolist())
    return replies, lengths


def sampled_replies(engine: RolloutEngine, prompts: List[str], sampling: SamplingParams, prompts_per_call: int,
                    seed_of: Optional[Callable[[int], int]] = None, meta: Optional[List[Dict[str, Any]]] = None,
                    progress: bool = False, desc: str = "sample") -> List[List[str]]:
    """sampling.n sampled replies to each rendered prompt, prompts_per_call prompts per engine call; each call is seeded
    with seed_of(index of its first prompt) when given (else sampling.seed). Outside the RL step: judge training data
    (judge.policy_pairs) and task=judge_on_policy."""
    out: List[List[str]] = []
    step = max(1, prompts_per_call)
    for start in tqdm(range(0, len(prompts), step), desc=desc, disable=not progress, leave=False):
        part = prompts[start:start + step]
        call = sampling if seed_of is None else replace(sampling, seed=seed_of(start))
        rollout = engine.generate(part, call, meta=None if meta is None else meta[start:start + step])
        out += [rollout.responses[k * sampling.n:(k + 1) * sampling.n] for k in range(len(part))]
    return out
