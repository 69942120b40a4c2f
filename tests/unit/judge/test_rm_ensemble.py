"""reward.ensemble: K BT heads on one base — aggregation by hand, member isolation, training, save/load."""

from __future__ import annotations

import pytest
import torch

from rlhf.config import DatasetConfig, JudgeConfig, ModelConfig, RewardConfig
from rlhf.dataset.prefs import pref_rows
from rlhf.judge.factory import build_pair_scorer
from rlhf.judge.rm_ensemble import aggregate, build_rm_ensemble, load_rm_ensemble

TINY = ModelConfig(source="tiny_random")


def test_aggregate_mean_and_lcb_hand_computed():
    s = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # 2 members x 2 items
    assert aggregate(s, "mean").tolist() == [2.0, 0.0]
    assert aggregate(s, "lcb", beta=0.5).tolist() == [1.5, 0.0]  # std of (1, 3) = 1
    with pytest.raises(ValueError, match="reward.ensemble_agg"):
        aggregate(s, "max")


def test_members_are_distinct_and_training_one_leaves_the_others():
    ens = build_rm_ensemble(TINY, JudgeConfig(max_len=64), k=3, seed=0)
    scores = ens.member_scores(["Add 2 and 3."] * 2, ["5", "6"])
    assert scores.shape == (3, 2)
    assert not torch.allclose(scores[0], scores[1])  # own head init per member
    assert all(not p.requires_grad for p in ens.parameters())
    with ens.member(1) as m:
        params = list(m.parameters())
        names = {n for n, p in ens.named_parameters() if p.requires_grad}
        assert params and all(".m1." in n or n.startswith("heads.1.") for n in names), names
        loss = m.score_ids([m.encode("Add 2 and 3.", "5")]).sum()
        loss.backward()
        torch.optim.SGD(params, lr=1.0).step()
    after = ens.member_scores(["Add 2 and 3."] * 2, ["5", "6"])
    assert torch.allclose(after[0], scores[0]) and torch.allclose(after[2], scores[2])
    assert not torch.allclose(after[1], scores[1])
    assert all(not p.requires_grad for p in ens.parameters())


def test_trained_ensemble_ranks_pairs_saves_and_loads(tmp_path):
    jc = JudgeConfig(max_len=64, train_steps=10, batch_size=8, lr=5e-3, heldout_pairs=0)
    rc = RewardConfig(name="bt_rm", ensemble=2, ensemble_agg="lcb", ensemble_lcb_beta=0.5)
    ds = DatasetConfig(name="synthetic_prefs", num_train=60, num_test=60)
    logged = []
    ens = build_pair_scorer(rc, jc, TINY, dataset_cfg=ds, train_dir=tmp_path / "rm",
                            log_fn=lambda m, s: logged.append((s, m)))
    assert [s for s, _ in logged] == list(range(20)) and {m["member"] for _, m in logged} == {0.0, 1.0}
    test = [r for r in pref_rows(ds, "test") if r["subset"] in ("synth-refusal", "synth-verbose")]
    args = ([r["prompt"] for r in test], [r["chosen"] for r in test], [r["rejected"] for r in test])
    sc, sr = ens.score_pairs(*args)
    assert sum(c > r for c, r in zip(sc, sr)) / len(sc) >= 0.75
    assert "ensemble_std" in ens.last_metrics
    loaded = load_rm_ensemble(tmp_path / "rm")
    assert (loaded.agg, loaded.beta, len(loaded.members)) == ("lcb", 0.5, 2)
    assert torch.allclose(loaded.member_scores(*args[:2]), ens.member_scores(*args[:2]), atol=1e-5)
    via_factory = build_pair_scorer(RewardConfig(name="bt_rm", ensemble_agg="mean"), jc, TINY,
                                    checkpoint=str(tmp_path / "rm"))
    assert via_factory.agg == "mean" and len(via_factory.members) == 2  # size from the checkpoint, agg from config


def test_members_share_the_frozen_layer_cache_and_match_the_full_forward():
    model = ModelConfig(source="tiny_random")
    model.tiny.num_hidden_layers = 3
    cfg = JudgeConfig(max_len=64, lora_layers=1)
    cfg.lora.dropout = 0.0
    ens = build_rm_ensemble(model, cfg, k=2, seed=0)
    seqs = [ens.encode("Add 2 and 3.", "5"), ens.encode("Hi", "Hello there")]
    for k in range(2):
        with ens.member(k) as m:
            with torch.no_grad():  # non-zero adapters, so the members differ in their top layer
                for n, p in ens.backbone.named_parameters():
                    if p.requires_grad and "lora_B" in n:
                        p.normal_(std=0.05)
            fast = m.training_scorer()
            assert fast.cache is ens.frozen_prefix and fast.cache.start == 2
            got = fast(seqs)
            assert torch.allclose(got, m.score_ids(seqs), atol=1e-5)
            got.sum().backward()  # gradients reach the member's adapter through the cached path
            assert all(p.grad is not None for n, p in ens.backbone.named_parameters() if p.requires_grad)
    assert ens.frozen_prefix.misses == 2  # member 1 reads member 0's frozen-layer outputs
