"""Bradley-Terry reward model: a scalar head on a causal LM's backbone (LoRA via peft, or full fine-tuning).

Loss: -log sigmoid(r_chosen - r_rejected - margin). One encoding is used for training and scoring alike
(``encode_response``): the chat-formatted [user: prompt, assistant: response] ends with exactly one EOS, sequences are
right-padded, and the score is the head applied to the hidden state of the last real token (that EOS).
Save/load: safetensors (LoRA: adapter + head only), written atomically (temp dir + os.replace).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from rlhf.config import JudgeConfig, LoraConfig, ModelConfig
from rlhf.judge.io import (
    MetricSink,
    drop_identical_pairs,
    fit_pairs,
    read_checkpoint_meta,
    write_json,
)
from rlhf.judge.lora_judge import attach_lora
from rlhf.judge.pair_losses import bt_pair_loss
from rlhf.judge.prompts import clip_ids
from rlhf.model.frozen_prefix import FrozenPrefixForward, verified_scorer
from rlhf.model.load import load_causal_lm
from rlhf.model.tensors import pad_sequences
from rlhf.report.io import atomic_save_dir

log = logging.getLogger(__name__)

META = "rm_meta.json"
HEAD = "head.safetensors"
ADAPTER = "adapter.safetensors"
BACKBONE = "backbone.safetensors"


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean of -log sigmoid(r_c - r_r - margin)."""
    return bt_pair_loss(r_chosen - r_rejected - margin)["loss"]


def encode_response(tokenizer: Any, prompt: str, response: str, max_len: int) -> List[int]:
    """Token ids of [user: prompt, assistant: response] ending with exactly one EOS; head+tail clipped to max_len."""
    eos = tokenizer.eos_token_id
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
    else:
        text = f"User: {prompt}\n\nAssistant: {response}"
    ids = tokenizer(text.rstrip(), add_special_tokens=False)["input_ids"]
    while ids and ids[-1] == eos:
        ids = ids[:-1]
    return clip_ids(ids, max_len - 1) + [eos]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return mask.sum(-1) - 1


def last_token_scores(head: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) float32: a scalar head on the hidden state of each right-padded row's last real token."""
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    return head(last.to(head.weight.dtype)).squeeze(-1).float()


class RewardModel(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, tokenizer: Any, hidden_size: int, max_len: int = 768,
                 lora: bool = False, lora_layers: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        torch.nn.init.zeros_(self.head.bias)
        self.tok = tokenizer
        self.max_len = max_len
        self.lora = lora
        self.lora_layers = lora_layers
        # set by train_bt_rm when some training labels are flipped (train_label_fit); read by rlhf.evaluate
        self.train_fit: Dict[str, float] = {}

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return self.head_scores(out.last_hidden_state, attention_mask)

    def head_scores(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return last_token_scores(self.head, hidden, attention_mask)

    def score_ids(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = pad_sequences(seqs, self.pad_id, side="right")
        return self(ids.to(self.device), mask.to(self.device))

    def training_scorer(self) -> Callable[[Sequence[Sequence[int]]], torch.Tensor]:
        """score_ids for training, with the frozen lower layers' output computed once per sequence when LoRA sits on
        the top layers only (rlhf.model.frozen_prefix.verified_scorer)."""
        return verified_scorer(self, FrozenPrefixForward.for_backbone(self.backbone, self.pad_id), self.head_scores,
                               self.score_ids, "bt_rm")

    def encode(self, prompt: str, response: str) -> List[int]:
        return encode_response(self.tok, prompt, response, self.max_len)

    def score(self, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8) -> torch.Tensor:
        """(N,) rewards, no gradients."""
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = torch.empty(len(seqs), dtype=torch.float32)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                out[idx] = self.score_ids([seqs[i] for i in idx]).cpu()
        self.train(was_training)
        return out

    def score_pairs(self, prompts: Sequence[str], chosen: Sequence[str],
                    rejected: Sequence[str]) -> Tuple[List[float], List[float]]:
        n = len(prompts)
        s = self.score(list(prompts) * 2, list(chosen) + list(rejected))
        return s[:n].tolist(), s[n:].tolist()

    # ----------------------------------------------------------------------------------------------- save / load
    def save(self, path: str | Path, model_cfg: Optional[ModelConfig] = None,
             lora_cfg: Optional[LoraConfig] = None) -> Path:
        def write(tmp: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(tmp / HEAD))
            if self.lora:
                state = get_peft_model_state_dict(self.backbone)
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / ADAPTER))
            else:
                state = {k: v.detach().cpu().clone().contiguous() for k, v in self.backbone.state_dict().items()}
                save_file(state, str(tmp / BACKBONE))
            write_json(tmp / META, {"kind": "bt_rm", "lora": self.lora, "max_len": self.max_len,
                                    "lora_layers": self.lora_layers,
                                    "hidden_size": self.head.in_features,
                                    "lora_cfg": asdict(lora_cfg) if lora_cfg else None,
                                    "model": asdict(model_cfg) if model_cfg else None})

        return atomic_save_dir(path, write)


def build_reward_model(model_cfg: ModelConfig, judge_cfg: JudgeConfig, dtype: str = "float32", seed: int = 0,
                       causal_lm: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> RewardModel:
    """Backbone of the causal LM (its lm_head is not used) + a fresh scalar head; LoRA when judge.lora.enabled."""
    if causal_lm is None:
        causal_lm, tokenizer = load_causal_lm(model_cfg, dtype=dtype, seed=seed)
    backbone = causal_lm.base_model
    lora = bool(judge_cfg.lora.enabled)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if lora:
            backbone = attach_lora(backbone, judge_cfg.lora, judge_cfg.lora_layers, task_type=None)
        rm = RewardModel(backbone, tokenizer, causal_lm.config.hidden_size, judge_cfg.max_len, lora,
                         judge_cfg.lora_layers if lora else 0)
    return rm  # the head stays float32 whatever the backbone dtype (hidden states are upcast before it)


def load_reward_model(path: str | Path, model_cfg: Optional[ModelConfig] = None, dtype: str = "float32",
                      causal_lm: Optional[torch.nn.Module] = None, tokenizer: Any = None) -> RewardModel:
    """Rebuilds the RM saved by RewardModel.save; model_cfg defaults to the one recorded in rm_meta.json."""

    path = Path(path)
    meta, model_cfg = read_checkpoint_meta(path, META, "bt_rm", model_cfg)
    lora = LoraConfig(**{**(meta.get("lora_cfg") or asdict(LoraConfig())), "enabled": bool(meta["lora"])})
    jc = JudgeConfig(max_len=meta["max_len"], lora=lora, lora_layers=int(meta.get("lora_layers", 0)))
    rm = build_reward_model(model_cfg, jc, dtype=dtype, causal_lm=causal_lm, tokenizer=tokenizer)
    rm.head.load_state_dict({k: v.to(rm.head.weight.dtype) for k, v in load_file(str(path / HEAD)).items()})
    if meta["lora"]:
        set_peft_model_state_dict(rm.backbone, load_file(str(path / ADAPTER)))
    else:
        rm.backbone.load_state_dict(load_file(str(path / BACKBONE)))
    for p in rm.parameters():
        p.requires_grad_(False)
    rm.eval()
    return rm


def train_bt_rm(rm: RewardModel, rows: Sequence[Dict[str, Any]], cfg: JudgeConfig, seed: int = 0,
                log_fn: Optional[Callable[[Dict[str, float], int], None]] = None,
                pair_loss: Optional[Callable[[torch.Tensor], Dict[str, torch.Tensor]]] = None) -> List[Dict[str, float]]:
    """judge.train_steps AdamW steps of judge.batch_size pairs; returns the per-step metrics. ``pair_loss`` maps the
    margins r_c - r_r - judge.margin to {"loss", ...} (rlhf.judge.pair_losses; default plain BT); its scalar extras
    (R3M's outlier fraction, adaptive scaling's mean tau) are logged with the step."""
    rows, dropped = drop_identical_pairs(rows)
    sink = log_fn if log_fn is not None else MetricSink()
    loss_of = pair_loss if pair_loss is not None else bt_pair_loss
    score_ids = rm.training_scorer() if hasattr(rm, "training_scorer") else rm.score_ids

    def batch_loss(batch: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        seqs = [rm.encode(r["prompt"], r["chosen"]) for r in batch] + [rm.encode(r["prompt"], r["rejected"])
                                                                      for r in batch]
        scores = score_ids(seqs)
        r_c, r_r = scores[:len(batch)], scores[len(batch):]
        out = {k: v for k, v in loss_of(r_c - r_r - cfg.margin).items() if v.dim() == 0}
        out.update(accuracy=(r_c > r_r).float().mean(), reward_margin=(r_c - r_r).mean())
        flipped = torch.tensor([bool(r.get("label_flipped")) for r in batch], device=r_c.device)
        if flipped.any():  # dataset.label_noise: how far the RM follows the flipped labels (memorises them)
            out["flipped_fit"] = (r_c > r_r)[flipped].float().mean()
            if not flipped.all():
                out["clean_fit"] = (r_c > r_r)[~flipped].float().mean()
        return out

    rm.train()
    history = fit_pairs([p for p in rm.parameters() if p.requires_grad], rows, cfg, seed, batch_loss, sink, dropped,
                        desc="bt_rm")
    rm.eval()
    if history and any(r.get("label_flipped") for r in rows):
        rm.train_fit = train_label_fit(rm, rows, score_ids)
        history[-1].update(rm.train_fit)
        log.info("bt_rm: after training it ranks %s of the flipped training pairs the flipped way and %s of the clean "
                 "ones the labelled way", *(f"{100 * rm.train_fit[k]:.0f} %" if k in rm.train_fit else "-"
                                            for k in ("train_flipped_followed", "train_clean_followed")))
    return history


def train_label_fit(rm: Any, rows: Sequence[Dict[str, Any]],
                    score_ids: Optional[Callable[[Sequence[Sequence[int]]], torch.Tensor]] = None,
                    batch_size: int = 8) -> Dict[str, float]:
    """Share of the training pairs (as labelled, flips included) the RM ranks chosen above rejected, separately for
    the rows flipped by dataset.label_noise and the clean ones: how far it memorised the flipped labels. A group
    with no rows has no key. ``score_ids`` scores encoded sequences (default ``rm.score_ids``; train_bt_rm passes its
    training scorer, which reads the frozen-layer cache of these very sequences), here in eval mode without grad."""
    score_ids = score_ids if score_ids is not None else rm.score_ids
    sc: List[float] = []
    sr: List[float] = []
    was_training = rm.training
    rm.eval()
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            batch = rows[s:s + batch_size]
            scores = score_ids([rm.encode(r["prompt"], r["chosen"]) for r in batch]
                               + [rm.encode(r["prompt"], r["rejected"]) for r in batch]).float().cpu()
            sc += scores[:len(batch)].tolist()
            sr += scores[len(batch):].tolist()
    rm.train(was_training)
    out: Dict[str, float] = {}
    for key, want in (("train_flipped_followed", True), ("train_clean_followed", False)):
        fit = [c > r for c, r, row in zip(sc, sr, rows) if bool(row.get("label_flipped")) == want]
        if fit:
            out[key] = sum(fit) / len(fit)
    return out
