"""An ensemble of K Bradley-Terry reward models on one base (``reward.ensemble=K``): K LoRA adapters on one peft-wrapped
backbone and K scalar heads. Member k is trained like a single BT RM (same pairs, own seed for its adapter and head
init and its batch order). The reward is the members' mean, or a lower confidence bound mean - beta * std
(``reward.ensemble_agg=lcb``) against over-optimisation; the spread is also the uncertainty that routing
(``reward=routed``) can read.

Saved like a single RM (rm_meta.json with ``"ensemble": K``, one adapter and one head file per member), so
``reward.checkpoint`` loads either.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from rlhf.config import JudgeConfig, LoraConfig, ModelConfig
from rlhf.judge.bt_rm import META, encode_response, last_token_scores
from rlhf.judge.io import read_checkpoint_meta, write_json
from rlhf.judge.lora_judge import peft_lora_config, top_layers
from rlhf.model.frozen_prefix import FrozenPrefixForward, verified_scorer
from rlhf.model.load import load_causal_lm
from rlhf.model.tensors import pad_sequences
from rlhf.report.io import atomic_save_dir


def aggregate(member_scores: torch.Tensor, agg: str = "mean", beta: float = 1.0) -> torch.Tensor:
    """(K, N) member scores -> (N,) reward: the mean, or mean - beta * std (population std over members)."""
    mean = member_scores.mean(0)
    if agg == "mean":
        return mean
    if agg == "lcb":
        return mean - beta * member_scores.std(0, unbiased=False)
    raise ValueError(f"reward.ensemble_agg: {agg!r} is not one of ['mean', 'lcb']")


class RMEnsemble(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer: Any, hidden_size: int, k: int, max_len: int = 768,
                 lora_layers: int = 0, agg: str = "mean", beta: float = 1.0, seed: int = 0):
        super().__init__()
        self.backbone = backbone  # a peft model holding adapters m0..m{k-1}
        self.members = [f"m{i}" for i in range(k)]
        self.heads = nn.ModuleList()
        for i in range(k):
            with torch.random.fork_rng():
                torch.manual_seed(seed + 7919 * i)
                head = nn.Linear(hidden_size, 1)
                nn.init.normal_(head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
                nn.init.zeros_(head.bias)
            self.heads.append(head)
        self.tok, self.max_len, self.lora_layers = tokenizer, max_len, lora_layers
        self.agg, self.beta = agg, beta
        self.last_metrics: dict = {}
        # frozen lower layers' output per training sequence, shared by the members (EnsembleMember.training_scorer)
        self.frozen_prefix: Optional[FrozenPrefixForward] = None

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.heads[0].weight.device

    def encode(self, prompt: str, response: str) -> List[int]:
        return encode_response(self.tok, prompt, response, self.max_len)

    @contextlib.contextmanager
    def using(self, k: int, trainable: bool = False) -> Iterator[None]:
        """Route forwards through member k's adapter; ``trainable``: only its adapter and head get gradients."""
        self.backbone.set_adapter(self.members[k])
        for n, p in self.backbone.named_parameters():
            p.requires_grad_(trainable and f".{self.members[k]}." in n and ".lora_" in n)
        for i, head in enumerate(self.heads):
            head.requires_grad_(trainable and i == k)
        try:
            yield
        finally:
            for p in self.parameters():
                p.requires_grad_(False)

    def member_forward(self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return last_token_scores(self.heads[k], hidden, attention_mask)

    def member_scores(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        """(K, N) member scores, no gradients."""
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = torch.empty(len(self.members), len(seqs), dtype=torch.float32)
        was = self.training
        self.eval()
        with torch.no_grad():
            for k in range(len(self.members)):
                with self.using(k):
                    for s in range(0, len(order), batch_size):
                        idx = order[s:s + batch_size]
                        ids, mask = pad_sequences([seqs[i] for i in idx], self.pad_id, side="right")
                        out[k, idx] = self.member_forward(k, ids.to(self.device), mask.to(self.device)).cpu()
        self.train(was)
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        """(N,) aggregated rewards; the mean member spread goes to last_metrics (logged as judge_ensemble_std)."""
        members = self.member_scores(prompts, responses, batch_size)
        self.last_metrics = {"ensemble_std": float(members.std(0, unbiased=False).mean())}
        return aggregate(members, self.agg, self.beta)

    def score_pairs(self, prompts: Sequence[str], chosen: Sequence[str],
                    rejected: Sequence[str]) -> Tuple[List[float], List[float]]:
        n = len(prompts)
        s = self.score(list(prompts) * 2, list(chosen) + list(rejected))
        return s[:n].tolist(), s[n:].tolist()

    def member(self, k: int) -> "EnsembleMember":
        return EnsembleMember(self, k)

    def save(self, path: str | Path, model_cfg: Optional[ModelConfig] = None,
             lora_cfg: Optional[LoraConfig] = None) -> Path:
        def write(tmp: Path) -> None:
            for k, name in enumerate(self.members):
                save_file({n: v.detach().cpu().contiguous() for n, v in self.heads[k].state_dict().items()},
                          str(tmp / f"head_{name}.safetensors"))
                state = get_peft_model_state_dict(self.backbone, adapter_name=name)
                save_file({n: v.detach().cpu().contiguous() for n, v in state.items()},
                          str(tmp / f"adapter_{name}.safetensors"))
            write_json(tmp / META, {"kind": "bt_rm", "ensemble": len(self.members), "lora": True,
                                    "max_len": self.max_len, "lora_layers": self.lora_layers,
                                    "hidden_size": self.heads[0].in_features, "agg": self.agg, "beta": self.beta,
                                    "lora_cfg": asdict(lora_cfg) if lora_cfg else None,
                                    "model": asdict(model_cfg) if model_cfg else None})

        return atomic_save_dir(path, write)


class EnsembleMember:
    """Member k seen as a single RM by ``train_bt_rm`` (encode, score_ids, parameters, train/eval)."""

    def __init__(self, ensemble: RMEnsemble, k: int):
        self.ens, self.k = ensemble, k
        self._scope: Optional[contextlib.ExitStack] = None

    def __enter__(self) -> "EnsembleMember":
        self._scope = contextlib.ExitStack()
        self._scope.enter_context(self.ens.using(self.k, trainable=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._scope is not None
        self._scope.close()

    def encode(self, prompt: str, response: str) -> List[int]:
        return self.ens.encode(prompt, response)

    def score_ids(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = pad_sequences(seqs, self.ens.pad_id, side="right")
        return self.ens.member_forward(self.k, ids.to(self.ens.device), mask.to(self.ens.device))

    def training_scorer(self) -> Callable[[Sequence[Sequence[int]]], torch.Tensor]:
        """score_ids, with the frozen lower layers' output computed once per sequence and shared by all members
        (rlhf.model.frozen_prefix: the frozen layers carry no adapter, so every member sees the same output)."""
        if self.ens.frozen_prefix is None:
            self.ens.frozen_prefix = FrozenPrefixForward.for_backbone(self.ens.backbone, self.ens.pad_id)
        head = self.ens.heads[self.k]
        return verified_scorer(self.ens, self.ens.frozen_prefix, lambda h, m: last_token_scores(head, h, m),
                               self.score_ids, f"bt_rm ensemble member {self.k}")

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.ens.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "EnsembleMember":
        self.ens.train(mode)
        return self

    def eval(self) -> "EnsembleMember":
        return self.train(False)


def build_rm_ensemble(model_cfg: ModelConfig, judge_cfg: JudgeConfig, k: int, agg: str = "mean", beta: float = 1.0,
                      dtype: str = "float32", seed: int = 0) -> RMEnsemble:
    """K fresh LoRA adapters (judge.lora, on the last judge.lora_layers layers) + K heads on one backbone."""
    causal_lm, tokenizer = load_causal_lm(model_cfg, dtype=dtype, seed=seed)
    backbone = causal_lm.base_model
    for p in backbone.parameters():
        p.requires_grad_(False)
    layers = top_layers(int(causal_lm.config.num_hidden_layers), judge_cfg.lora_layers)
    peft_cfg = peft_lora_config(judge_cfg.lora, None, layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft = get_peft_model(backbone, peft_cfg, adapter_name="m0")
        for i in range(1, k):
            torch.manual_seed(seed + 7919 * i)
            peft.add_adapter(f"m{i}", peft_cfg)
    ens = RMEnsemble(peft, tokenizer, causal_lm.config.hidden_size, k, judge_cfg.max_len, judge_cfg.lora_layers,
                     agg, beta, seed)
    for p in ens.parameters():
        p.requires_grad_(False)
    return ens


def load_rm_ensemble(path: str | Path, model_cfg: Optional[ModelConfig] = None, dtype: str = "float32",
                     agg: Optional[str] = None, beta: Optional[float] = None) -> RMEnsemble:
    """Rebuilds the ensemble saved by RMEnsemble.save (agg / beta: as trained unless given)."""
    path = Path(path)
    meta, model_cfg = read_checkpoint_meta(path, META, "bt_rm", model_cfg)
    lora = LoraConfig(**{**(meta.get("lora_cfg") or asdict(LoraConfig())), "enabled": True})
    jc = JudgeConfig(max_len=meta["max_len"], lora=lora, lora_layers=int(meta.get("lora_layers", 0)))
    ens = build_rm_ensemble(model_cfg, jc, int(meta["ensemble"]), agg or meta.get("agg", "mean"),
                            meta.get("beta", 1.0) if beta is None else beta, dtype)
    for k, name in enumerate(ens.members):
        ens.heads[k].load_state_dict(load_file(str(path / f"head_{name}.safetensors")))
        set_peft_model_state_dict(ens.backbone, load_file(str(path / f"adapter_{name}.safetensors")),
                                  adapter_name=name)
    ens.eval()
    return ens
