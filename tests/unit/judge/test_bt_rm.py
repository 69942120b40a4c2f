"""Bradley-Terry reward model on the tiny random model: loss values, encoding, padding, training, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig
from rlhf.dataset.prefs import pref_rows
from rlhf.judge.bt_rm import (
    ADAPTER,
    BACKBONE,
    HEAD,
    bt_loss,
    build_reward_model,
    encode_response,
    last_token_index,
    load_reward_model,
    train_bt_rm,
    train_label_fit,
)
from rlhf.model.tensors import pad_sequences

TINY = ModelConfig(source="tiny_random")


def test_bt_loss_hand_computed():
    r_c, r_r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -log sigmoid(1) = log(1 + e^-1) = 0.313262; -log sigmoid(0) = log 2 = 0.693147
    assert bt_loss(r_c, r_r).item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2)
    assert bt_loss(r_c, r_r).item() == pytest.approx(0.5032044, abs=1e-6)
    # margin 0.5: -log sigmoid(0.5) = 0.474077, -log sigmoid(-0.5) = 0.974077
    assert bt_loss(r_c, r_r, margin=0.5).item() == pytest.approx(0.7240770, abs=1e-6)


def test_right_pad_last_token_index():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert last_token_index(mask).tolist() == [2, 0]


def test_encoding_ends_with_exactly_one_eos(tokenizer):
    ids = encode_response(tokenizer, "Add 2 and 3.", "2 + 3 = 5.\n#### 5", max_len=512)
    assert ids[-1] == tokenizer.eos_token_id and ids[-2] != tokenizer.eos_token_id
    long = encode_response(tokenizer, "word " * 400, "answer " * 400, max_len=64)
    assert len(long) == 64 and long[-1] == tokenizer.eos_token_id and long[-2] != tokenizer.eos_token_id
    # an explicit trailing EOS in the text does not produce a second one
    assert encode_response(tokenizer, "q", "a" + tokenizer.eos_token, 512) == encode_response(tokenizer, "q", "a", 512)


def test_padding_does_not_change_scores():
    rm = build_reward_model(TINY, JudgeConfig(max_len=128), seed=1)
    rm.eval()
    short = rm.score(["Add 2 and 3."], ["5"])
    batch = rm.score(["Add 2 and 3.", "Tell me a long story " * 10], ["5", "Once upon a time " * 10])
    assert torch.allclose(short[0], batch[0], atol=1e-5)
    # scoring uses the same encoding as training
    direct = rm.score_ids([rm.encode("Add 2 and 3.", "5")])
    assert torch.allclose(direct.detach(), short, atol=1e-5)


def _refusal_pairs(split, n):
    rows = pref_rows(DatasetConfig(name="synthetic_prefs", num_train=n, num_test=n), split)
    return [r for r in rows if r["subset"] in ("synth-refusal", "synth-verbose")]


def test_rm_learns_easy_task_and_drops_identical_pairs():
    cfg = JudgeConfig(max_len=64, train_steps=10, batch_size=8, lr=5e-3)
    rm = build_reward_model(TINY, cfg, seed=0)
    train = _refusal_pairs("train", 60)
    train += [{"prompt": "p", "chosen": "same", "rejected": "same "}] * 3
    test = _refusal_pairs("test", 60)
    args = ([r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test])
    logged = []
    hist = train_bt_rm(rm, train, cfg, seed=0, log_fn=lambda m, s: logged.append((s, m)))
    assert len(hist) == 10 and len(logged) == 10
    assert hist[0]["dropped_identical"] == 3
    assert hist[-1]["loss"] < hist[0]["loss"]
    sc, sr = rm.score_pairs(*args)
    acc = sum(c > r for c, r in zip(sc, sr)) / len(sc)
    assert acc >= 0.75, acc


@pytest.mark.parametrize("lora", [True, False])
def test_save_load_roundtrip_atomic(tmp_path, lora):
    cfg = JudgeConfig(max_len=64, train_steps=1, batch_size=2, lr=1e-2)
    cfg.lora.enabled = lora
    rm = build_reward_model(TINY, cfg, seed=0)
    train_bt_rm(rm, _refusal_pairs("train", 12), cfg)
    target = tmp_path / "rm"
    rm.save(target, TINY, cfg.lora)
    rm.save(target, TINY, cfg.lora)  # overwrite in place
    files = {p.name for p in target.iterdir()}
    assert HEAD in files and (ADAPTER in files) == lora and (BACKBONE in files) == (not lora)
    assert [p.name for p in tmp_path.iterdir()] == ["rm"]  # no temp dirs left behind
    loaded = load_reward_model(target)
    prompts, resp = ["Add 2 and 3.", "Hi"], ["2 + 3 = 5.\n#### 5", "I can't help with that."]
    assert torch.allclose(rm.score(prompts, resp), loaded.score(prompts, resp), atol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("robust,extra", [("r3m", "outlier_fraction"), ("adaptive", "tau_mean")])
def test_robust_losses_train_the_rm_and_log_their_variable(robust, extra):
    from rlhf.judge.pair_losses import pair_loss_fn

    cfg = JudgeConfig(max_len=64, train_steps=10, batch_size=8, lr=5e-3)
    rm = build_reward_model(TINY, cfg, seed=0)
    hist = train_bt_rm(rm, _refusal_pairs("train", 60), cfg, seed=0, pair_loss=pair_loss_fn(robust))
    assert all(extra in h for h in hist)
    test = _refusal_pairs("test", 60)
    sc, sr = rm.score_pairs([r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test])
    assert sum(c > r for c, r in zip(sc, sr)) / len(sc) >= 0.75


def test_flip_labels_swaps_an_exact_seeded_fraction():
    from rlhf.judge.factory import flip_labels, training_pairs

    rows = [{"prompt": str(i), "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(50)]
    out = flip_labels(rows, 0.2, seed=3)
    flipped = [r for r in out if r.get("label_flipped")]
    assert len(flipped) == 10 and all(r["chosen"].startswith("r") for r in flipped)
    assert all(r["chosen"].startswith("c") for r in out if not r.get("label_flipped"))
    assert rows[0] == {"prompt": "0", "chosen": "c0", "rejected": "r0"}  # input untouched
    assert flip_labels(rows, 0.2, seed=3) == out and flip_labels(rows, 0.2, seed=4) != out
    # dataset.label_noise reaches the train split only; the held-out pairs stay clean
    noisy = training_pairs(DatasetConfig(name="synthetic_prefs", num_train=40, num_test=10, label_noise=0.25))
    clean = training_pairs(DatasetConfig(name="synthetic_prefs", num_train=40, num_test=10))
    assert sum(a != b for a, b in zip(noisy, clean)) == 10
    # a math run's judge trains on synthetic_prefs and keeps the run's label_noise
    via_math = training_pairs(DatasetConfig(name="synthetic_math", label_noise=0.1))
    assert sum(bool(r.get("label_flipped")) for r in via_math) == round(0.1 * len(via_math))


class _SignRM(torch.nn.Module):
    """A one-weight RM: score = w * (+1 for a reply starting "good", -1 otherwise)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))

    def encode(self, prompt, response):
        return [1.0 if response.startswith("good") else -1.0]

    def score_ids(self, seqs):
        return self.w * torch.tensor([s[0] for s in seqs])


def test_train_bt_rm_logs_how_far_it_follows_flipped_labels():
    clean = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    flipped = [{"prompt": f"q{i}", "chosen": f"bad {i}", "rejected": f"good {i}", "label_flipped": True}
               for i in range(2)]
    cfg = JudgeConfig(train_steps=1, batch_size=8, lr=1e-3)
    hist = train_bt_rm(_SignRM(), clean + flipped, cfg, seed=0)
    # w = 1 ranks every "good" reply first: all 6 clean pairs fit, neither flipped pair does; 6/8 in all
    assert hist[0]["clean_fit"] == 1.0 and hist[0]["flipped_fit"] == 0.0 and hist[0]["accuracy"] == 0.75
    # one small step keeps w > 0: over the whole training set, no flipped label followed, every clean one
    assert hist[-1]["train_flipped_followed"] == 0.0 and hist[-1]["train_clean_followed"] == 1.0
    rm = _SignRM()
    with torch.no_grad():
        rm.w.fill_(-1.0)  # a model that memorised the flips and nothing else
    assert train_label_fit(rm, clean + flipped) == {"train_flipped_followed": 1.0, "train_clean_followed": 0.0}
    assert "flipped_fit" not in train_bt_rm(_SignRM(), clean, cfg, seed=0)[0]


def test_train_label_fit_leaves_out_a_group_without_rows():
    rows = [{"prompt": "q", "chosen": "bad 1", "rejected": "good 1", "label_flipped": True}]
    assert train_label_fit(_SignRM(), rows) == {"train_flipped_followed": 0.0}
    hist = train_bt_rm(_SignRM(), rows, JudgeConfig(train_steps=1, batch_size=1, lr=1e-3))
    assert "train_flipped_followed" in hist[-1] and "train_clean_followed" not in hist[-1]


def _two_copies(lora_layers):
    """Two RMs with identical weights on a 3-layer tiny model, LoRA on the last lora_layers layers."""
    model = ModelConfig(source="tiny_random")
    model.tiny.num_hidden_layers = 3
    cfg = JudgeConfig(max_len=64, lora_layers=lora_layers)
    cfg.lora.dropout = 0.0
    a, b = build_reward_model(model, cfg, seed=3), build_reward_model(model, cfg, seed=3)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # make the adapters non-zero so the trainable layers matter
        for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
            if pa.requires_grad and "lora_B" in na:
                pa.normal_(std=0.05)
                pb.copy_(pa)
    return a, b


def test_frozen_prefix_cache_equals_full_forward_in_scores_and_gradients():
    a, b = _two_copies(lora_layers=1)
    fast = a.training_scorer()
    assert fast.cache is not None and fast.cache.start == 2  # layers 0-1 frozen, layer 2 has LoRA
    seqs = [a.encode("Add 2 and 3.", "2 + 3 = 5.\n#### 5"), a.encode("Hi", "Hello! How can I help?"),
            a.encode("Name a colour.", "Blue")]
    a.train(), b.train()
    for _ in range(2):  # second pass reads the cache
        sa, sb = fast(seqs), b.score_ids(seqs)
        assert torch.allclose(sa, sb, atol=1e-5), (sa, sb)
    assert fast.cache.misses == 3 and fast.cache.hits == 3 + 3  # the first-batch check scores once more
    (sa * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    (sb * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
    grads = [(na, pa.grad, pb.grad) for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters())
             if pa.requires_grad]
    assert grads and all(ga is not None and torch.allclose(ga, gb, atol=1e-5) for _, ga, gb in grads)


def test_frozen_prefix_cache_is_off_when_every_layer_trains():
    a, _ = _two_copies(lora_layers=0)  # LoRA on all layers: nothing to cache
    assert getattr(a.training_scorer(), "cache", None) is None


def test_frozen_prefix_cache_falls_back_to_the_full_forward_when_it_cannot_run(caplog):
    a, b = _two_copies(lora_layers=1)
    fast = a.training_scorer()

    def broken(*args, **kwargs):
        raise TypeError("unexpected keyword argument")

    fast.cache._layers = broken
    seqs = [a.encode("Hi", "Hello")]
    with caplog.at_level("WARNING"):
        got = fast(seqs)
    assert "full forwards" in caplog.text
    assert torch.allclose(got, b.score_ids(seqs), atol=1e-5)


def test_train_label_fit_reads_the_frozen_layer_cache_and_agrees_with_the_full_forward():
    a, _ = _two_copies(lora_layers=1)
    rows = [{"prompt": f"Add {i} and 3.", "chosen": f"{i} + 3 = {i + 3}.", "rejected": f"{i} + 3 = {i + 4}.",
             "label_flipped": i % 3 == 0} for i in range(7)]
    fast = a.training_scorer()
    fast([a.encode(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")])  # as training would
    hits = fast.cache.hits
    got = train_label_fit(a, rows, fast, batch_size=3)
    assert fast.cache.hits == hits + 14 and fast.cache.misses == 14  # every sequence read from the cache
    assert got == train_label_fit(a, rows)  # same verdicts as rm.score_ids' full forward
    assert set(got) == {"train_flipped_followed", "train_clean_followed"}
