"""The rubric judge: a frozen (or LoRA-adapted) causal LM read through its next-token verdict distribution.

Pairwise: P(A better) = mean of P("A" | A shown first) and P("B" | A shown second), each a softmax over the logits of
the two verdict tokens only. Pointwise: the expected score over the rubric's score tokens. Nothing is parsed from
generated text; ``rationale`` generates an explanation for inspection only.

A rubric with several criteria is judged once per criterion (each with its own prompt prefix and prefix KV cache) and
the score is the weighted mean (weights normalised to sum 1); the per-criterion means go to ``last_metrics`` as
``criterion/<name>_mean``. Items may carry their own rubric (``rubrics=``, one per item: a per-prompt rubric column);
items are grouped by rubric, so without per-item rubrics every item is scored in one group exactly as before.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from rlhf.config import JudgeConfig, ModelConfig
from rlhf.judge.prefix_forward import PrefixCache, batched_verdict_logits
from rlhf.judge.prompts import (
    JudgePrompter,
    Rubric,
    load_demo_pool,
    parse_rubric,
    select_demos,
)
from rlhf.judge.verdict import (
    criterion_means,
    expected_score,
    position_bias,
    symmetric_pairwise,
    verdict_probs,
    weighted_total,
)
from rlhf.model.load import load_causal_lm
from rlhf.model.shared import model_scope
from rlhf.model.tensors import pad_sequences

log = logging.getLogger(__name__)


RubricSpec = Union[None, str, Rubric]  # a per-item rubric: None = judge.rubric, else its JSON text or parsed form


class RubricJudge:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: JudgeConfig,
                 demos: Sequence[Dict[str, Any]] = (), device: torch.device | str = "cpu"):
        self.model = model
        self.tok = tokenizer
        self.cfg = cfg
        self.device = torch.device(device)
        self.prompter = JudgePrompter(tokenizer, cfg, demos)  # judge.rubric's first (often only) criterion
        self.rubric = self.prompter.rubric
        self._prompters: Dict[Tuple[Rubric, int], JudgePrompter] = {(self.rubric, 0): self.prompter}
        self._caches: Dict[Tuple[Rubric, int], PrefixCache] = {}
        self._parsed: Dict[str, Rubric] = {}
        self.last_metrics: Dict[str, float] = {}
        # judge.vllm: (token-id prompts, verdict ids) -> (N, K) verdict log-probs from a vLLM engine, used instead of
        # the transformers forward (the same distribution: the probabilities are the softmax over the K verdicts)
        self.verdict_backend: Optional[Callable[[List[List[int]], List[int]], torch.Tensor]] = None

    @property
    def mode(self) -> str:
        return self.prompter.mode

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    # ----------------------------------------------------------------------------------------- rubrics, prompters
    def rubric_of(self, spec: RubricSpec) -> Rubric:
        """judge.rubric for None or "", else the given rubric (JSON text parsed once and remembered)."""
        if spec is None or isinstance(spec, Rubric):
            return self.rubric if spec is None else spec
        if not spec.strip():
            return self.rubric
        if spec not in self._parsed:
            self._parsed[spec] = parse_rubric(spec, "rubric")
        return self._parsed[spec]

    def criterion_prompters(self, spec: RubricSpec = None) -> List[JudgePrompter]:
        """One prompter (one prefix) per criterion of the rubric, built once and kept."""
        rubric = self.rubric_of(spec)
        out = []
        for c in range(len(rubric.criteria)):
            if (rubric, c) not in self._prompters:
                self._prompters[(rubric, c)] = JudgePrompter(self.tok, self.cfg, self.prompter.demos, rubric, c)
            out.append(self._prompters[(rubric, c)])
        return out

    def rubric_groups(self, n: int, rubrics: Optional[Sequence[RubricSpec]]) -> List[Tuple[Rubric, List[int]]]:
        """[(rubric, item indices)] in first-seen order; without per-item rubrics, judge.rubric for all n items."""
        if rubrics is None:
            return [(self.rubric, list(range(n)))]
        if len(rubrics) != n:
            raise ValueError(f"{len(rubrics)} rubrics for {n} items")
        groups: Dict[Rubric, List[int]] = {}
        for i, spec in enumerate(rubrics):
            groups.setdefault(self.rubric_of(spec), []).append(i)
        return list(groups.items())

    def invalidate_cache(self) -> None:
        """Call after the weights change (e.g. LoRA training): the cached prefix keys/values are stale."""
        self._caches.clear()

    def prefix_cache(self, prompter: Optional[JudgePrompter] = None) -> PrefixCache:
        """The KV cache of one criterion's prefix (default: judge.rubric's first criterion), computed once."""
        pr = self.prompter if prompter is None else prompter
        key = (pr.rubric, pr.criterion)
        if key not in self._caches:
            self._caches[key] = PrefixCache(self.model, pr.prefix_ids, self.device)
        return self._caches[key]

    # ------------------------------------------------------------------------------------------------- raw logits
    def verdict_logits(self, suffixes: Sequence[Sequence[int]], use_cache: Optional[bool] = None,
                       prompter: Optional[JudgePrompter] = None) -> torch.Tensor:
        """(N, K) logits of the verdict tokens after prefix + suffix_i (the prefix of ``prompter``, default
        judge.rubric's first criterion)."""
        pr = self.prompter if prompter is None else prompter
        if self.verdict_backend is not None:
            return self.verdict_backend([list(pr.prefix_ids) + list(sx) for sx in suffixes], list(pr.verdict_ids))
        use_cache = self.cfg.reuse_prefix_cache if use_cache is None else use_cache
        self.model.eval()
        with model_scope(self.model):  # on a shared base: the judge's adapter (or none) for the whole batch
            cache = self.prefix_cache(pr) if use_cache else None
            return batched_verdict_logits(self.model, pr.prefix_ids, suffixes, pr.verdict_ids, self.pad_id,
                                          self.device, self.cfg.eval_batch_size, cache)

    # --------------------------------------------------------------------------------------------------- pairwise
    def pair_order_probs(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                         use_cache: Optional[bool] = None,
                         prompter: Optional[JudgePrompter] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(p_ab, p_ba): verdict probabilities with ``first`` shown as A, then shown as B. Each (N, 2)."""
        self._require("pairwise")
        pr = self.prompter if prompter is None else prompter
        n = len(prompts)
        suffixes = [pr.pair_suffix(p, a, b) for p, a, b in zip(prompts, first, second)]
        suffixes += [pr.pair_suffix(p, b, a) for p, a, b in zip(prompts, first, second)]
        probs = verdict_probs(self.verdict_logits(suffixes, use_cache, pr))
        return probs[:n], probs[n:]

    def prob_first_better(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                          use_cache: Optional[bool] = None,
                          rubrics: Optional[Sequence[RubricSpec]] = None) -> torch.Tensor:
        """(N,) P(first better than second), symmetric under swapping the two (sums to 1 with the swap); with several
        criteria, the weighted mean of the per-criterion probabilities. ``rubrics``: one per item (None: judge.rubric).
        """
        if not len(prompts):
            return torch.zeros(0)
        out = torch.empty(len(prompts), dtype=torch.float32)
        bias: List[torch.Tensor] = []
        agree: List[torch.Tensor] = []
        per_criterion: Dict[str, List[torch.Tensor]] = {}
        for rubric, idx in self.rubric_groups(len(prompts), rubrics):
            sub = [[seq[i] for i in idx] for seq in (prompts, first, second)]
            cols = []
            for pr in self.criterion_prompters(rubric):
                p_ab, p_ba = self.pair_order_probs(*sub, use_cache=use_cache, prompter=pr)
                bias.append(position_bias(p_ab, p_ba))
                agree.append((p_ab[:, 0] > 0.5) == (p_ba[:, 1] > 0.5))
                cols.append(symmetric_pairwise(p_ab, p_ba))
            out[idx] = self._aggregate(rubric, cols, per_criterion)
        self.last_metrics = {"position_bias": float(torch.cat(bias).mean()),
                             "order_agreement": float(torch.cat(agree).float().mean()),
                             **criterion_means(per_criterion)}
        return out

    # -------------------------------------------------------------------------------------------------- pointwise
    def score_probs(self, prompts: Sequence[str], responses: Sequence[str], use_cache: Optional[bool] = None,
                    prompter: Optional[JudgePrompter] = None) -> torch.Tensor:
        """(N, K) distribution over the rubric's score tokens (one criterion: ``prompter``'s)."""
        self._require("pointwise")
        pr = self.prompter if prompter is None else prompter
        suffixes = [pr.single_suffix(p, r) for p, r in zip(prompts, responses)]
        return verdict_probs(self.verdict_logits(suffixes, use_cache, pr))

    def pointwise_scores(self, prompts: Sequence[str], responses: Sequence[str], use_cache: Optional[bool] = None,
                         rubrics: Optional[Sequence[RubricSpec]] = None) -> torch.Tensor:
        """(N,) expected rubric score in [low, high]; with several criteria, the weighted mean of the per-criterion
        expected scores. ``rubrics``: one per item (None: judge.rubric)."""
        if not len(prompts):
            return torch.zeros(0)
        out = torch.empty(len(prompts), dtype=torch.float32)
        per_criterion: Dict[str, List[torch.Tensor]] = {}
        for rubric, idx in self.rubric_groups(len(prompts), rubrics):
            sub = [[seq[i] for i in idx] for seq in (prompts, responses)]
            cols = [expected_score(self.score_probs(*sub, use_cache=use_cache, prompter=pr), rubric.score_values)
                    for pr in self.criterion_prompters(rubric)]
            out[idx] = self._aggregate(rubric, cols, per_criterion)
        self.last_metrics = criterion_means(per_criterion)
        return out

    def _aggregate(self, rubric: Rubric, cols: List[torch.Tensor],
                   per_criterion: Dict[str, List[torch.Tensor]]) -> torch.Tensor:
        """The weighted total of one rubric's criterion scores; a multi-criterion rubric's scores are kept by name
        for the criterion/<name>_mean metrics."""
        if len(cols) > 1:
            for name, col in zip(rubric.names, cols):
                per_criterion.setdefault(name, []).append(col)
        return weighted_total(torch.stack(cols, dim=1), rubric.weights)

    # ------------------------------------------------------------------------------------------------ pair scorer
    def score_pairs(self, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str],
                    rubrics: Optional[Sequence[RubricSpec]] = None) -> Tuple[List[float], List[float]]:
        """Scores for (chosen, rejected): P(chosen better) and its complement, or the two pointwise scores."""
        if self.mode == "pairwise":
            p = self.prob_first_better(prompts, chosen, rejected, rubrics=rubrics)
            return p.tolist(), (1.0 - p).tolist()
        s = self.pointwise_scores(list(prompts) * 2, list(chosen) + list(rejected),
                                  rubrics=None if rubrics is None else list(rubrics) * 2)
        n = len(prompts)
        return s[:n].tolist(), s[n:].tolist()

    # -------------------------------------------------------------------------------------------------- rationale
    def rationale(self, prompt: str, first: str, second: Optional[str] = None) -> str:
        """Greedy explanation after the judge's most likely verdict (for inspection; never used as a score)."""
        return self.rationales([prompt], [first], None if second is None else [second])[0]

    def rationales(self, prompts: Sequence[str], firsts: Sequence[str],
                   seconds: Optional[Sequence[str]] = None) -> List[str]:
        """``"<verdict>: <greedy explanation>"`` per item, generated in batches of judge.eval_batch_size.

        Every item shares the rubric + demonstrations prefix: its keys/values are computed once (the judge's prefix
        cache) and each batch is laid out as [prefix | pad ... pad | suffix_i verdict_i "Reason:"], the pads masked
        out and the positions counting real tokens only, so every row sees exactly the sequence it would see alone.
        """
        n = len(prompts)
        if not n:
            return []
        pr = self.prompter
        if self.mode == "pairwise":
            seconds = [""] * n if seconds is None else seconds
            suffixes = [pr.pair_suffix(p, a, b) for p, a, b in zip(prompts, firsts, seconds)]
        else:
            suffixes = [pr.single_suffix(p, r) for p, r in zip(prompts, firsts)]
        verdicts = [pr.verdict_ids[int(i)] for i in self.verdict_logits(suffixes).argmax(-1)]
        lead = self.tok("\nReason:", add_special_tokens=False)["input_ids"]
        conts = [list(sx) + [v] + lead for sx, v in zip(suffixes, verdicts)]
        order = sorted(range(n), key=lambda i: -len(conts[i]))  # longest first: little padding per batch
        texts = [""] * n
        bs = max(1, self.cfg.eval_batch_size)
        self.model.eval()
        with model_scope(self.model), torch.no_grad():
            cache = self.prefix_cache(pr)
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                tail, tail_mask = pad_sequences([conts[i] for i in idx], self.pad_id)
                b = tail.shape[0]
                ids = torch.cat([torch.tensor([list(pr.prefix_ids)] * b, dtype=torch.long), tail], dim=1)
                mask = torch.cat([torch.ones((b, cache.length), dtype=torch.long), tail_mask], dim=1)
                out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                          past_key_values=cache.expand(b), do_sample=False,
                                          max_new_tokens=self.cfg.rationale_max_new_tokens,
                                          pad_token_id=self.pad_id)
                for row, i in enumerate(idx):
                    texts[i] = self.tok.decode(out[row, ids.shape[1]:], skip_special_tokens=True).strip()
        return [f"{self.tok.decode([v]).strip()}: {t}" for v, t in zip(verdicts, texts)]

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
