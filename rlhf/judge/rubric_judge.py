"""The rubric judge: a frozen (or LoRA-adapted) causal LM read through its next-token verdict distribution.

Pairwise: P(A better) = mean of P("A" | A shown first) and P("B" | A shown second), each a softmax over the logits of
the two verdict tokens only. Pointwise: the expected score over the rubric's score tokens. Nothing is parsed from
generated text; ``rationale`` generates an explanation for inspection only.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from rlhf.config import JudgeConfig, ModelConfig
from rlhf.judge.prefix_forward import PrefixCache, batched_verdict_logits
from rlhf.judge.prompts import JudgePrompter, load_demo_pool, select_demos
from rlhf.judge.verdict import (
    expected_score,
    position_bias,
    symmetric_pairwise,
    verdict_probs,
)
from rlhf.model.load import load_causal_lm
from rlhf.model.shared import model_scope

log = logging.getLogger(__name__)


class RubricJudge:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: JudgeConfig,
                 demos: Sequence[Dict[str, Any]] = (), device: torch.device | str = "cpu"):
        self.model = model
        self.tok = tokenizer
        self.cfg = cfg
        self.device = torch.device(device)
        self.prompter = JudgePrompter(tokenizer, cfg, demos)
        self._cache: Optional[PrefixCache] = None
        self.last_metrics: Dict[str, float] = {}

    @property
    def mode(self) -> str:
        return self.prompter.mode

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def invalidate_cache(self) -> None:
        """Call after the weights change (e.g. LoRA training): the cached prefix keys/values are stale."""
        self._cache = None

    def prefix_cache(self) -> PrefixCache:
        if self._cache is None:
            self._cache = PrefixCache(self.model, self.prompter.prefix_ids, self.device)
        return self._cache

    # ------------------------------------------------------------------------------------------------- raw logits
    def verdict_logits(self, suffixes: Sequence[Sequence[int]], use_cache: Optional[bool] = None) -> torch.Tensor:
        """(N, K) logits of the verdict tokens after prefix + suffix_i."""
        use_cache = self.cfg.reuse_prefix_cache if use_cache is None else use_cache
        self.model.eval()
        with model_scope(self.model):  # on a shared base: the judge's adapter (or none) for the whole batch
            cache = self.prefix_cache() if use_cache else None
            return batched_verdict_logits(self.model, self.prompter.prefix_ids, suffixes, self.prompter.verdict_ids,
                                          self.pad_id, self.device, self.cfg.eval_batch_size, cache)

    # --------------------------------------------------------------------------------------------------- pairwise
    def pair_order_probs(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                         use_cache: Optional[bool] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(p_ab, p_ba): verdict probabilities with ``first`` shown as A, then shown as B. Each (N, 2)."""
        self._require("pairwise")
        n = len(prompts)
        suffixes = [self.prompter.pair_suffix(p, a, b) for p, a, b in zip(prompts, first, second)]
        suffixes += [self.prompter.pair_suffix(p, b, a) for p, a, b in zip(prompts, first, second)]
        probs = verdict_probs(self.verdict_logits(suffixes, use_cache))
        return probs[:n], probs[n:]

    def prob_first_better(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                          use_cache: Optional[bool] = None) -> torch.Tensor:
        """(N,) P(first better than second), symmetric under swapping the two (sums to 1 with the swap)."""
        if not len(prompts):
            return torch.zeros(0)
        p_ab, p_ba = self.pair_order_probs(prompts, first, second, use_cache)
        self.last_metrics = {"position_bias": float(position_bias(p_ab, p_ba).mean()),
                             "order_agreement": float(((p_ab[:, 0] > 0.5) == (p_ba[:, 1] > 0.5)).float().mean())}
        return symmetric_pairwise(p_ab, p_ba)

    # -------------------------------------------------------------------------------------------------- pointwise
    def score_probs(self, prompts: Sequence[str], responses: Sequence[str],
                    use_cache: Optional[bool] = None) -> torch.Tensor:
        """(N, K) distribution over the rubric's score tokens."""
        self._require("pointwise")
        suffixes = [self.prompter.single_suffix(p, r) for p, r in zip(prompts, responses)]
        return verdict_probs(self.verdict_logits(suffixes, use_cache))

    def pointwise_scores(self, prompts: Sequence[str], responses: Sequence[str],
                         use_cache: Optional[bool] = None) -> torch.Tensor:
        """(N,) expected rubric score in [low, high]."""
        if not len(prompts):
            return torch.zeros(0)
        return expected_score(self.score_probs(prompts, responses, use_cache), self.prompter.rubric.score_values)

    # ------------------------------------------------------------------------------------------------ pair scorer
    def score_pairs(self, prompts: Sequence[str], chosen: Sequence[str],
                    rejected: Sequence[str]) -> Tuple[List[float], List[float]]:
        """Scores for (chosen, rejected): P(chosen better) and its complement, or the two pointwise scores."""
        if self.mode == "pairwise":
            p = self.prob_first_better(prompts, chosen, rejected)
            return p.tolist(), (1.0 - p).tolist()
        s = self.pointwise_scores(list(prompts) * 2, list(chosen) + list(rejected))
        n = len(prompts)
        return s[:n].tolist(), s[n:].tolist()

    # -------------------------------------------------------------------------------------------------- rationale
    def rationale(self, prompt: str, first: str, second: Optional[str] = None) -> str:
        """Greedy explanation after the judge's most likely verdict (for inspection; never used as a score)."""
        if self.mode == "pairwise":
            suffix = self.prompter.pair_suffix(prompt, first, second or "")
        else:
            suffix = self.prompter.single_suffix(prompt, first)
        logits = self.verdict_logits([suffix], use_cache=False)
        verdict = self.prompter.verdict_ids[int(logits[0].argmax())]
        lead = self.tok("\nReason:", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([self.prompter.prefix_ids + suffix + [verdict] + lead], device=self.device)
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=self.cfg.rationale_max_new_tokens, pad_token_id=self.pad_id)
        text = self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        return f"{self.tok.decode([verdict]).strip()}: {text}"

    def _require(self, mode: str) -> None:
        if self.mode != mode:
            raise ValueError(f"judge.mode is {self.mode!r}; this call needs {mode!r}")


def judge_demos(cfg: JudgeConfig, dataset_cfg: Any = None) -> List[Dict[str, Any]]:
    if cfg.num_demos <= 0:
        return []
    return select_demos(load_demo_pool(cfg, dataset_cfg), cfg.num_demos, cfg.demo_seed)


def build_rubric_judge(model_cfg: ModelConfig, cfg: JudgeConfig, device: torch.device | str = "cpu",
                       dtype: str = "float32", model: Optional[torch.nn.Module] = None, tokenizer: Any = None,
                       dataset_cfg: Any = None, seed: int = 0) -> RubricJudge:
    """A training-free rubric judge; loads the model from model_cfg unless one is given. Weights are frozen."""
    if model is None:
        model, tokenizer = load_causal_lm(model_cfg, dtype=dtype, seed=seed)
        model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return RubricJudge(model, tokenizer, cfg, judge_demos(cfg, dataset_cfg), device)
