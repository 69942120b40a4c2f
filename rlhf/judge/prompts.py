"""Judge prompts: the one-line JSON rubric, in-context demonstrations and token-level prompt assembly.

A judge prompt is a chat: a system turn with the rubric, ``num_demos`` demonstration turns (user: item, assistant:
"Verdict: A" or "Score: 4") and the item to judge as the last user turn, followed by the assistant header and the
verdict lead ("Verdict:" / "Score: "). Everything before the last user turn's content is the same for every item: the
*prefix*, tokenized once (and its KV cache reused, rlhf/judge/prefix_forward.py). The item part (*suffix*) is tokenized
separately and the two id lists are concatenated, so the cached and uncached paths see identical tokens.

A rubric with several criteria (rlhf/dataset/rubric.py) has one prompter, hence one prefix, per criterion: the system
turn shows that criterion only; demonstrations and items are the same for every criterion.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rlhf.config import ConfigError, DatasetConfig, JudgeConfig
from rlhf.dataset.prefs import demo_pool_rows
from rlhf.dataset.rubric import Rubric, parse_rubric  # defined with the loaders, which check per-row rubrics
from rlhf.report.io import read_jsonl
from rlhf.task.math_grading import reference_answer, reference_solution

SENTINEL = "\u2063ITEM\u2063"
PAIR_LABELS = ("A", "B")
PAIR_LEAD = "Verdict: "
SCORE_LEAD = "Score: "

REFERENCE_HEADERS = {"answer": "[Reference answer]", "solution": "[Reference solution]"}


def reference_of(row: Dict[str, Any], mode: str) -> Optional[str]:
    """What a reference-guided judge (judge.reference) is shown for one item, or None (mode none, or no reference):
    answer = the math reference's final answer; solution = the item's reference reply, else the math reference
    solution without calculator annotations."""
    if mode == "none":
        return None
    answer = row.get("answer")
    if mode == "answer":
        return reference_answer(str(answer)) if answer else None
    if row.get("reference"):
        return str(row["reference"])
    return reference_solution(str(answer)) if answer else None


def guided_request(prompt: str, row: Dict[str, Any], mode: str) -> str:
    """The request as a reference-guided judge reads it: the prompt, then the reference block when there is one."""
    ref = reference_of(row, mode)
    return prompt if ref is None else f"{prompt}\n\n{REFERENCE_HEADERS[mode]}\n{ref}"


def system_text(rubric: Rubric, mode: str, reference: str = "none", criterion: int = 0) -> str:
    """The system turn of the judge prompt for one criterion of the rubric (the string form's only criterion is shown
    exactly as written)."""
    head = f"You are an impartial judge. Criteria: {rubric.criteria[criterion].text}."
    if reference != "none":  # "answer" or "solution"
        head += (f" When the request is followed by a reference {reference}, it is correct: a response whose final "
                 f"answer differs from the reference {reference}'s is wrong.")
    if mode == "pairwise":
        return (f"{head} Compare two responses (A and B) to the user's request and decide which one is better by the "
                "criteria. Position and length do not matter. Reply with 'Verdict: A' or 'Verdict: B'.")
    return (f"{head} Rate the response to the user's request on a scale from {rubric.low} (worst) to {rubric.high} "
            f"(best) by the criteria. Reply with 'Score: N', N being {rubric.output}.")


def pair_item_text(prompt: str, a: str, b: str) -> str:
    return f"[Request]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}"


def single_item_text(prompt: str, response: str) -> str:
    return f"[Request]\n{prompt}\n\n[Response]\n{response}"


# ----------------------------------------------------------------------------------------------------------- tokens
def verdict_token_ids(tokenizer, lead: str, labels: Sequence[str]) -> Tuple[List[int], List[int]]:
    """(lead ids, one id per label) such that ids(lead + label) == lead ids + [label id] for every label.

    The lead is the longest token prefix that all ``lead + label`` encodings share, so e.g. "Score: " may end in a
    bare-space token when digits are tokenized separately. Fails if a label needs more than one token.
    """
    encs = [tokenizer(lead + lab, add_special_tokens=False)["input_ids"] for lab in labels]
    n = 0
    while all(len(e) > n for e in encs) and len({e[n] for e in encs}) == 1:
        n += 1
    for lab, e in zip(labels, encs):
        if len(e) != n + 1:
            raise ConfigError(f"judge: verdict {lead + lab!r} is not <shared lead> + one token for this tokenizer")
    ids = [e[n] for e in encs]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"judge: verdict labels {list(labels)} share a token")
    return encs[0][:n], ids


def clip_ids(ids: List[int], max_tokens: int, marker: Sequence[int] = ()) -> List[int]:
    """Keep the head and the tail of ``ids`` (``marker`` between them) so that the result has max_tokens ids."""
    if len(ids) <= max_tokens:
        return list(ids)
    keep = max(max_tokens - len(marker), 2)
    head = keep // 2
    return list(ids[:head]) + list(marker) + list(ids[len(ids) - (keep - head):])


def clip_text(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    marker = tokenizer(" [...] ", add_special_tokens=False)["input_ids"]
    return tokenizer.decode(clip_ids(ids, max_tokens, marker))


def render_chat(tokenizer, messages: List[Dict[str, str]]) -> str:
    """Chat template with a generation prompt; a plain "Role: text" layout when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant: "


# ------------------------------------------------------------------------------------------------------------ demos
def select_demos(pool: Sequence[Dict[str, Any]], k: int, seed: int) -> List[Dict[str, Any]]:
    """k demonstrations drawn without replacement from the pool (seeded); label order alternates for balance."""
    if k <= 0:
        return []
    if len(pool) < k:
        raise ConfigError(f"judge.num_demos: {k} demonstrations requested but the pool has {len(pool)}")
    rng = random.Random(seed)
    picked = rng.sample(list(pool), k)
    flips = [j % 2 == 1 for j in range(k)]
    rng.shuffle(flips)
    return [dict(d, _flip=f) for d, f in zip(picked, flips)]


class JudgePrompter:
    """Builds prefix/suffix token ids for one judge configuration (rubric criterion, mode, demonstrations, tokenizer).

    ``rubric`` (default: judge.rubric parsed) and ``criterion`` (its index in rubric.criteria) pick what the system
    turn shows; the verdict tokens depend on the mode and the rubric's scale only."""

    def __init__(self, tokenizer, cfg: JudgeConfig, demos: Sequence[Dict[str, Any]] = (),
                 rubric: Optional[Rubric] = None, criterion: int = 0):
        if cfg.mode not in ("pairwise", "pointwise"):
            raise ConfigError(f"judge.mode: {cfg.mode!r} is not one of ['pairwise', 'pointwise']")
        self.tok = tokenizer
        self.cfg = cfg
        self.mode = cfg.mode
        if cfg.reference not in REFERENCE_HEADERS and cfg.reference != "none":
            raise ConfigError(f"judge.reference: {cfg.reference!r} is not one of ['none', 'answer', 'solution']")
        self.reference = cfg.reference
        self.rubric = parse_rubric(cfg.rubric) if rubric is None else rubric
        self.criterion = criterion
        if self.mode == "pairwise":
            self.labels = list(PAIR_LABELS)
            self.lead_ids, self.verdict_ids = verdict_token_ids(tokenizer, PAIR_LEAD, self.labels)
        else:
            self.labels = [str(v) for v in self.rubric.score_values]
            self.lead_ids, self.verdict_ids = verdict_token_ids(tokenizer, SCORE_LEAD, self.labels)
        self.lead_text = tokenizer.decode(self.lead_ids)
        self.demos = list(demos)
        self._build_template()

    # item budgets: the request gets a quarter of max_len, the responses share the rest
    def _budget(self, n_responses: int) -> Tuple[int, int]:
        prompt_budget = max(self.cfg.max_len // 4, 16)
        return prompt_budget, max((self.cfg.max_len - prompt_budget - 32) // n_responses, 16)

    def item_text(self, prompt: str, responses: Sequence[str]) -> str:
        pb, rb = self._budget(len(responses))
        prompt = clip_text(self.tok, prompt, pb)
        rs = [clip_text(self.tok, r, rb) for r in responses]
        return pair_item_text(prompt, rs[0], rs[1]) if len(rs) == 2 else single_item_text(prompt, rs[0])

    def request(self, row: Dict[str, Any]) -> str:
        """A preference row's prompt as this judge reads it (with its reference block under judge.reference)."""
        return guided_request(str(row["prompt"]), row, self.reference)

    def demo_turns(self) -> List[Dict[str, str]]:
        turns: List[Dict[str, str]] = []
        for j, d in enumerate(self.demos):
            flip = d.get("_flip", j % 2 == 1)
            if self.mode == "pairwise":
                a, b = (d["rejected"], d["chosen"]) if flip else (d["chosen"], d["rejected"])
                user, answer = self.item_text(self.request(d), [a, b]), PAIR_LEAD + ("B" if flip else "A")
            else:
                resp, score = (d["rejected"], self.rubric.low) if flip else (d["chosen"], self.rubric.high)
                user, answer = self.item_text(self.request(d), [resp]), f"{SCORE_LEAD}{score}"
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        return turns

    def _build_template(self) -> None:
        system = system_text(self.rubric, self.mode, self.reference, self.criterion)
        messages = [{"role": "system", "content": system}] + self.demo_turns()
        rendered = render_chat(self.tok, messages + [{"role": "user", "content": SENTINEL}])
        if rendered.count(SENTINEL) != 1:
            raise ConfigError("judge: the chat template does not keep the item text intact")
        self.prefix_text, self.tail_text = rendered.split(SENTINEL)
        self.prefix_ids: List[int] = self.tok(self.prefix_text, add_special_tokens=False)["input_ids"]

    def suffix_ids(self, item_text: str) -> List[int]:
        """Item + end of the user turn + assistant header + verdict lead; the next token is the verdict."""
        return self.tok(item_text + self.tail_text, add_special_tokens=False)["input_ids"] + list(self.lead_ids)

    def pair_suffix(self, prompt: str, a: str, b: str) -> List[int]:
        return self.suffix_ids(self.item_text(prompt, [a, b]))

    def single_suffix(self, prompt: str, response: str) -> List[int]:
        return self.suffix_ids(self.item_text(prompt, [response]))

    def target_index(self, chosen_first: bool) -> int:
        """Index into verdict_ids of the correct label for a pairwise item (chosen shown as A when chosen_first)."""
        return 0 if chosen_first else 1


def load_demo_pool(cfg: JudgeConfig, dataset_cfg: Optional[Any] = None, n: int = 48) -> List[Dict[str, Any]]:
    """judge.demo_path (JSONL prompt/chosen/rejected) or the train split of synthetic_prefs."""
    if cfg.demo_path:
        rows = read_jsonl(cfg.demo_path, "judge.demo_path")
        for i, r in enumerate(rows):
            for f in ("prompt", "chosen", "rejected"):
                if not isinstance(r.get(f), str) or not r[f].strip():
                    raise ValueError(f"judge.demo_path: {cfg.demo_path} row {i}: missing field '{f}'")
        return rows
    base = dataset_cfg if dataset_cfg is not None and dataset_cfg.name == "synthetic_prefs" else \
        DatasetConfig(name="synthetic_prefs")
    return demo_pool_rows(base, n)
