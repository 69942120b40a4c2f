"""Our RL math against the public peer implementations, on random inputs under matched conventions.

Peers (exact versions, checked below): verl 0.9.1 (verl/trainer/ppo/core_algos.py, the DAPO reward manager),
OpenRLHF 0.11.2 (openrlhf/models/loss.py, openrlhf/models/utils.py, the experience maker's advantage code) and
TRL 1.16.0 (GRPOTrainer._compute_loss, DPOTrainer._compute_loss). Where a convention differs the matched case is
tested and the difference is asserted as the relationship written in PEER_CONVENTIONS.md (next to this file), which
lists every difference and why.

How the peers are installed and imported (no GPU stack, no network at test time):
- `make test` installs the three wheels with `pip install --no-deps --target .venv/peers` (the Makefile's $(PEERS)
  stamp). --no-deps keeps ray, vllm, flash_attn, tensordict, ... out and torch untouched; a folder of its own rather
  than site-packages because the verl and OpenRLHF wheels also ship top-level `tests` and `scripts` packages.
  RLHF_PEERS_DIR points elsewhere; without the folder the module is skipped (run `make test`, or the pip line).
- The folder is never put on sys.path. `verl`, `openrlhf` (and a few of their sub-packages) are registered as bare
  packages whose modules load from it, so their `__init__` files, which import the distributed runtime
  (verl.protocol -> ray, tensordict; openrlhf.models -> flash_attn), do not run. The peer modules we call are the
  wheels' own files, loaded unmodified.
- While they load, the few third-party modules they import but the math never calls are stubs (ray, tensordict,
  codetiming, orjson; OpenRLHF's ray launcher), and vllm is hidden so TRL does not import it (importing vllm patches
  torch, which is why the vllm tests run in a process of their own). Every stub leaves sys.modules afterwards, and the
  environment and warning filters are restored, so the rest of the pytest session is not affected.
- Calling a method on a minimal object: TRL keeps its losses inside trainer methods; they are called unbound on a
  namespace carrying just the attributes they read (the model forward is a stand-in returning the test's log-probs).

PEER_PARITY_REPORT=<file.json> writes the largest absolute difference seen per compared quantity.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import json
import math
import os
import sys
import types
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from rlhf.algo.advantages import gae, group_advantages, kl_shaped_scores, masked_whiten, token_rewards
from rlhf.algo.cispo import cispo_policy_loss
from rlhf.algo.dapo import overlong_penalty
from rlhf.algo.gspo import gspo_policy_loss
from rlhf.algo.kl import kl_estimate
from rlhf.algo.losses import aggregate, clipped_policy_loss, clipped_value_loss
from rlhf.algo.online_dpo import dpo_loss
from rlhf.algo.reinforce_pp import ReinforcePP, ReinforcePPConfig, discounted_returns
from rlhf.algo.rloo import RLOO, RLOOConfig, leave_one_out_advantages

PEERS = Path(os.environ.get("RLHF_PEERS_DIR") or Path(sys.prefix) / "peers")
VERSIONS = {"verl": "0.9.1", "openrlhf": "0.11.2", "trl": "1.16.0"}
SEEDS = (0, 1, 2)
F64 = {"rtol": 1e-10, "atol": 1e-12}  # same formula, float64: only summation order differs
NEAR = {"rtol": 1e-7, "atol": 1e-8}  # a peer divides by count + 1e-8 where we divide by count (O(1e-8) apart)

if not PEERS.is_dir():
    pytest.skip(f"peer wheels not installed in {PEERS} (`make test` installs them: its $(PEERS) step)",
                allow_module_level=True)


# ------------------------------------------------------------------------------------------------------ peer loading
class _NeverCalled:
    """Stands for a class of a stubbed dependency that the compared math never touches."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("a stubbed peer dependency was used; the parity test must not reach it")


def _bare_package(name: str) -> types.ModuleType:
    """Register `name` as a package whose submodules load from PEERS, without running its __init__.py."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(PEERS.joinpath(*name.split(".")))]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(_bare_package(parent), child, module)
    return module


@contextlib.contextmanager
def _isolated_import(stubs: dict, hidden: tuple = ()):
    """Stub modules (name -> attributes) and hide others (import fails) while peers load; undo it all afterwards,
    together with whatever the peers did to os.environ and the warning filters at import time."""
    names = list(stubs) + list(hidden)
    saved = {n: sys.modules.get(n, KeyError) for n in names}
    env = dict(os.environ)
    for name, attrs in stubs.items():
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            for attr, value in attrs.items():
                setattr(sys.modules[name], attr, value)
    for name in hidden:
        sys.modules[name] = None  # find_spec() -> None and `import` raises: the peer sees it as not installed
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for name, old in saved.items():
            if old is KeyError:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
        for name in set(os.environ) - set(env):  # e.g. TORCHINDUCTOR_CACHE_DIR, set during verl's imports
            del os.environ[name]
        os.environ.update({k: v for k, v in env.items() if os.environ.get(k) != v})


def _check_version(name: str) -> None:
    dist = PEERS / f"{name}-{VERSIONS[name]}.dist-info"
    assert dist.is_dir(), (f"{PEERS} does not hold {name}=={VERSIONS[name]} (found "
                           f"{sorted(p.name for p in PEERS.glob(name + '-*.dist-info'))}); reinstall: "
                           f"rm {Path(sys.prefix) / '.peers-installed'} && make test")


# verl: core_algos imports verl.utils.torch_functional (tensordict.TensorDict in type hints and dict helpers),
# verl.workers.config (-> profiler: codetiming.Timer; tracking: orjson; single_controller: ray.ObjectRef;
# transferqueue_utils: tensordict.tensorclass). None of these is called by the loss/advantage functions.
_VERL_STUBS = {
    "ray": {"ObjectRef": _NeverCalled},
    "tensordict": {"TensorDict": _NeverCalled},
    "tensordict.tensorclass": {"NonTensorData": _NeverCalled, "NonTensorStack": _NeverCalled},
    "codetiming": {"Timer": _NeverCalled},
    "orjson": {},
}


@pytest.fixture(scope="module")
def verl():
    _check_version("verl")
    _bare_package("verl")
    with _isolated_import(_VERL_STUBS):
        core = importlib.import_module("verl.trainer.ppo.core_algos")
        # the reward manager does `from verl import DataProto`, the one name of verl/__init__.py it needs
        sys.modules["verl"].DataProto = importlib.import_module("verl.protocol").DataProto
        dapo = importlib.import_module("verl.workers.reward_manager.dapo")
    return NS(core=core, F=core.verl_F, ActorConfig=core.ActorConfig, AlgoConfig=core.AlgoConfig,
              DAPORewardManager=dapo.DAPORewardManager)


@pytest.fixture(scope="module")
def orl():
    _check_version("openrlhf")
    for pkg in ("openrlhf", "openrlhf.models", "openrlhf.utils", "openrlhf.trainer"):
        _bare_package(pkg)
    # experience_maker.py imports ray (used to fetch remote results) and the ray launcher (type hints only)
    stubs = {"ray": {}, "openrlhf.trainer.ray": {}, "openrlhf.trainer.ray.launcher": {"RayActorGroup": _NeverCalled}}
    with _isolated_import(stubs):
        loss = importlib.import_module("openrlhf.models.loss")
        utils = importlib.import_module("openrlhf.models.utils")
        maker = importlib.import_module("openrlhf.trainer.ppo_utils.experience_maker")
        length = importlib.import_module("openrlhf.trainer.ppo_utils.length_penalty")
    return NS(loss=loss, utils=utils, Maker=maker.RemoteExperienceMaker, length=length)


@pytest.fixture(scope="module")
def trl():
    with _isolated_import({}, hidden=("vllm",)):
        if "trl" in sys.modules:
            assert sys.modules["trl"].__version__ == VERSIONS["trl"], sys.modules["trl"].__version__
        else:
            _check_version("trl")
            spec = importlib.util.spec_from_file_location(
                "trl", PEERS / "trl" / "__init__.py", submodule_search_locations=[str(PEERS / "trl")])
            module = importlib.util.module_from_spec(spec)
            sys.modules["trl"] = module
            spec.loader.exec_module(module)
        grpo = importlib.import_module("trl.trainer.grpo_trainer")
        dpo = importlib.import_module("trl.trainer.dpo_trainer")
    return NS(GRPOTrainer=grpo.GRPOTrainer, DPOTrainer=dpo.DPOTrainer)


# --------------------------------------------------------------------------------------------------------- helpers
MAX_DIFF: dict = defaultdict(float)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("PEER_PARITY_REPORT")
    if path:
        Path(path).write_text(json.dumps(dict(sorted(MAX_DIFF.items())), indent=1))


def close(actual, expected, what: str, **tol) -> None:
    """assert_close (float64 tolerances by default) and remember the largest difference under `what`."""
    actual, expected = (x if torch.is_tensor(x) else torch.tensor(x, dtype=torch.float64) for x in (actual, expected))
    diff = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    MAX_DIFF[what] = max(MAX_DIFF[what], diff)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **(tol or F64), msg=lambda m: f"{what}: {m}")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def right_padded_mask(g, B: int, T: int, empty: int = 1) -> torch.Tensor:
    """(B, T) float64 mask, random lengths in [1, T], row 0 full, `empty` other rows with no token at all."""
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if empty:
        lengths[1 + torch.randperm(B - 1, generator=g)[:empty]] = 0
    return (torch.arange(T) < lengths[:, None]).double()


def policy_inputs(g, B=12, T=9, empty=2, spread=0.35):
    """old/new log-probs (ratios on both sides of a 0.2 clip range), advantages, mask."""
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
    logp = old + rand(g, B, T, scale=spread)
    return logp, old, rand(g, B, T), right_padded_mask(g, B, T, empty)


def last_token_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) token-level scores: the sequence score on its last real token (column 0 for an empty reply, whose mask
    is 0 there), the layout verl's reward managers produce."""
    out = torch.zeros_like(mask, dtype=scores.dtype)
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    out[torch.arange(mask.shape[0]), last] = scores
    return out


def grad(loss, x):
    return torch.autograd.grad(loss, x)[0]


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def actor_config(verl, clip_low=0.2, clip_high=0.2, clip_c=3.0, agg="token-mean", norm_tokens=None):
    info = {} if norm_tokens is None else {"loss_scale_factor": norm_tokens}
    return verl.ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=clip_low,
                            clip_ratio_low=clip_low, clip_ratio_high=clip_high, clip_ratio_c=clip_c,
                            loss_agg_mode=agg, global_batch_info=info)


VERL_AGG = {"token_mean": "token-mean", "seq_mean": "seq-mean-token-mean",
            "seq_mean_token_sum_norm": "seq-mean-token-sum-norm"}


def trl_grpo_loss(trl, logp, old, adv, mask, loss_type, eps_low, eps_high, level="token", beta=0.0, ref=None,
                  max_completion_length=None):
    """TRL's GRPOTrainer._compute_loss on a minimal trainer: the model forward returns `logp`; eval mode (no gradient
    accumulation scaling), one process, no entropy bonus, no vLLM correction."""
    accel = NS(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x, gather_for_metrics=lambda x: x)
    fake = NS(_get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
              top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
              loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
              args=NS(delta=None, use_bias_correction_kl=False), use_vllm=False,
              vllm_importance_sampling_correction=False, model=NS(training=False),
              current_gradient_accumulation_steps=1, max_completion_length=max_completion_length,
              _entropy_bonus_enabled=False, aux_loss_enabled=False, accelerator=accel,
              _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    B, T = logp.shape
    inputs = {"prompt_ids": torch.zeros(B, 0, dtype=torch.long), "prompt_mask": torch.zeros(B, 0),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "num_items_in_batch": mask.sum()}
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return trl.GRPOTrainer._compute_loss(fake, None, inputs)


def trl_dpo_loss(trl, chosen, rejected, ref_chosen, ref_rejected, beta):
    """TRL's DPOTrainer._compute_loss (loss_type sigmoid, precomputed reference log-probs) on a minimal trainer whose
    model returns the sequence log-probs as one completion token per row (rows: chosen then rejected)."""
    n = chosen.shape[0]
    per_token = torch.cat([chosen, rejected]).unsqueeze(1)
    zeros = torch.zeros_like(per_token)

    def model(**kwargs):
        return NS(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    accel = NS(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x)
    fake = NS(model=NS(training=False), accelerator=accel, aux_loss_enabled=False, ld_alpha=None,
              precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
              beta=beta, label_smoothing=0.0, use_weighting=False, _total_train_tokens=0, _tp_size=1,
              _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    inputs = {"input_ids": torch.zeros(2 * n, 2, dtype=torch.long), "attention_mask": torch.ones(2 * n, 2),
              "completion_mask": torch.tensor([[0, 1]] * (2 * n)), "ref_chosen_logps": ref_chosen,
              "ref_rejected_logps": ref_rejected}
    return trl.DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False)


def orl_advantages(orl, scores, mask, estimator, group_size, kl=None, kl_coef=0.0, values=None, gamma=1.0, lam=1.0):
    """OpenRLHF's RemoteExperienceMaker.compute_advantages_and_returns on one experience holding the whole batch."""
    B = mask.shape[0]
    args = NS(rollout=NS(n_samples_per_prompt=group_size),
              algo=NS(advantage=NS(estimator=estimator, gamma=gamma, lambd=lam, no_std_norm=False)),
              reward=NS(clip_range=None, overlong_buffer_len=None, stop_properly_penalty_coef=None))
    fake = NS(strategy=NS(args=args), advantage_estimator=estimator, kl_ctl=NS(value=kl_coef),
              get_cumulative_returns=lambda *a: orl.Maker.get_cumulative_returns(None, *a),
              get_advantages_and_returns=lambda *a: orl.Maker.get_advantages_and_returns(None, *a))
    exp = NS(rewards=scores.clone(), index=list(range(B)), action_mask=mask,
             kl=torch.zeros_like(mask) if kl is None else kl, values=values, info={})
    orl.Maker.compute_advantages_and_returns(fake, [exp])
    return exp.advantages, exp.returns


def n_nonempty(mask):
    return float((mask.sum(-1) > 0).sum())


# ------------------------------------------------------------------------------------------------------------- KL
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators(verl, orl, seed, est):
    g = gen(seed)
    ref = -torch.rand(8, 7, generator=g, dtype=torch.float64) * 3
    logp = leaf(ref + rand(g, 8, 7, scale=0.5))  # |log ratio| < ~2: verl's cap of k3 at 10 stays out of reach
    ours = kl_estimate(logp, ref, est)
    g_ours = grad(ours.sum(), logp)
    v = verl.core.kl_penalty(logp, ref, est)
    close(ours, v, f"kl {est} vs verl")
    close(g_ours, grad(v.sum(), logp), f"kl {est} grad vs verl")
    o = orl.utils.compute_approx_kl(logp, ref, kl_estimator=est)  # computes in float32
    close(ours, o.double(), f"kl {est} vs openrlhf", rtol=1e-6, atol=1e-6)
    close(g_ours, grad(o.sum(), logp).double(), f"kl {est} grad vs openrlhf", rtol=1e-6, atol=1e-6)


def test_kl_estimators_far_off_policy_clamps(verl, orl):
    """Convention: verl caps k3 at 10, OpenRLHF caps every estimator to [-10, 10]; ours only keeps k3's exp finite."""
    ref = torch.zeros(1, 6, dtype=torch.float64)
    logp = torch.tensor([[-30.0, -12.0, -3.0, 3.0, 12.0, 30.0]], dtype=torch.float64)
    for est in ("k1", "k2", "k3"):
        ours = kl_estimate(logp, ref, est)
        expected_verl = ours.clamp(max=10.0) if est == "k3" else ours
        close(verl.core.kl_penalty(logp, ref, est), expected_verl, f"kl {est} far vs verl (verl caps k3 at 10)")
        close(orl.utils.compute_approx_kl(logp, ref, kl_estimator=est).double(), ours.clamp(-10.0, 10.0),
              f"kl {est} far vs openrlhf (clamped to [-10, 10])", rtol=1e-6, atol=1e-6)
    assert kl_estimate(logp, ref, "k3").max() > 10.0


# ------------------------------------------------------------------------------------------------------- whitening
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten(verl, seed, shift_mean):
    g = gen(seed)
    x = rand(g, 10, 8, scale=2.0) + 0.7
    mask = right_padded_mask(g, 10, 8, empty=2)
    ours = masked_whiten(x, mask, shift_mean=shift_mean)
    v = verl.F.masked_whiten(x, mask, shift_mean=shift_mean)
    close(ours, v * mask, f"masked_whiten shift_mean={shift_mean} vs verl (ours zeroes padding)", **NEAR)


def test_masked_whiten_degenerate_masks(verl):
    """Convention: verl raises on 0 or 1 masked entries (unbiased variance undefined); ours returns zeros."""
    x = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    for mask in (torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)):
        with pytest.raises(ValueError):
            verl.F.masked_whiten(x, mask)
        assert torch.equal(masked_whiten(x, mask), torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------- token rewards, GAE
@pytest.mark.parametrize("seed", SEEDS)
def test_token_rewards(verl, orl, seed):
    g = gen(seed)
    mask = right_padded_mask(g, 10, 7, empty=2)
    scores, kl, coef = rand(g, 10), rand(g, 10, 7, scale=0.3) * mask, 0.07
    ours = token_rewards(scores, kl, mask, coef)
    # verl: token_level_scores (score on the last token) - kl_coef * kl, kl masked as in ray_trainer.apply_kl_penalty
    v = verl.core.compute_rewards(last_token_scores(scores, mask), kl, torch.zeros_like(kl), coef) * mask
    close(ours, v, "token_rewards vs verl")
    o = orl.utils.compute_reward(scores, coef, kl, action_mask=mask)
    has = mask.sum(-1) > 0
    close(ours[has], o[has], "token_rewards vs openrlhf (non-empty rows)")
    # Convention: OpenRLHF puts an empty reply's score on the last column; ours gives it no reward (masked anyway)
    close(o[~has], torch.nn.functional.pad(scores[~has, None], (mask.shape[1] - 1, 0)),
          "token_rewards empty rows: openrlhf score on the last column")
    assert torch.equal(ours[~has], torch.zeros_like(ours[~has]))


@pytest.mark.parametrize("seed", SEEDS)
def test_gae(verl, orl, seed):
    g = gen(seed)
    mask = right_padded_mask(g, 10, 8, empty=2)
    rewards, values = rand(g, 10, 8) * mask, rand(g, 10, 8)
    gamma, lam = [(1.0, 0.95), (0.99, 0.9), (0.9, 1.0)][seed]
    adv, ret = gae(rewards, values, mask, gamma, lam)
    o_adv, o_ret = orl.Maker.get_advantages_and_returns(None, values, rewards, mask, gamma, lam)
    close(adv, o_adv, "gae advantages vs openrlhf")
    close(ret, o_ret, "gae returns vs openrlhf")
    # verl whitens inside its GAE (ours: whiten_advantages) and leaves values in the returns' padded positions
    v_adv, v_ret = verl.core.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    close(masked_whiten(adv, mask), v_adv * mask, "gae advantages (whitened) vs verl", **NEAR)
    close(ret, v_ret * mask, "gae returns vs verl")


# ------------------------------------------------------------------------------------------------ group advantages
def grouped_scores(g, n_groups=5, G=4):
    scores = torch.randint(0, 4, (n_groups * G,), generator=g).double() + rand(g, n_groups * G, scale=0.1)
    scores[:G] = (torch.arange(G) % 2).double()  # a binary-reward group
    return scores


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages(verl, orl, seed, scale_by_std):
    g = gen(seed)
    G = 4
    scores = grouped_scores(g, 5, G)
    mask = right_padded_mask(g, 20, 6, empty=3)
    ours = group_advantages(scores, G, scale_by_std=scale_by_std)  # float32
    index = np.repeat(np.arange(5), G)
    v, _ = verl.core.compute_grpo_outcome_advantage(last_token_scores(scores, mask), mask, index,
                                                    norm_adv_by_std_in_grpo=scale_by_std)
    close(ours[:, None] * mask, v, f"group_advantages std={scale_by_std} vs verl", rtol=1e-6, atol=1e-6)
    o, _ = orl_advantages(orl, scores, mask, "group_norm" if scale_by_std else "dr_grpo", G)
    if scale_by_std:  # Convention: OpenRLHF divides by std + 1e-9, ours (and verl, the GRPO code) std + 1e-6
        std = scores.reshape(-1, G).std(dim=1).repeat_interleave(G)
        o = o * ((std + 1e-9) / (std + 1e-6))[:, None]
    close(ours[:, None] * mask, o, f"group_advantages std={scale_by_std} vs openrlhf", rtol=1e-6, atol=1e-6)


def test_group_advantages_flat_and_singleton_groups(verl):
    """Convention: ours zeroes a group whose rewards are all equal (and a group of one); verl divides float32
    rounding noise by its 1e-6 eps there, and passes a single sample's raw score through."""
    flat = torch.full((7,), 0.7)  # float32: mean(7 x 0.7) != 0.7 by one rounding step
    ones = torch.ones(7, 1)
    v, _ = verl.core.compute_grpo_outcome_advantage(flat[:, None], ones, np.zeros(7))
    assert torch.equal(group_advantages(flat, 7), torch.zeros(7))
    close(v[:, 0], (flat - flat.mean()) / (flat.std() + 1e-6), "flat group: verl amplifies rounding", atol=0, rtol=0)
    assert v.abs().max() > 1e-2  # what the float64 statistics + zeroing avoid
    single = torch.tensor([0.3, -1.2])
    v1, _ = verl.core.compute_grpo_outcome_advantage(single[:, None], torch.ones(2, 1), np.arange(2))
    close(v1[:, 0], single / (1 + 1e-6), "group of one: verl score / (1 + eps)", rtol=1e-7, atol=0)
    with warnings.catch_warnings():  # torch warns about the std of one sample (our schemas require groups of 2+)
        warnings.simplefilter("ignore", UserWarning)
        assert torch.equal(group_advantages(single, 1), torch.zeros(2))
    v1, _ = verl.core.compute_rloo_outcome_advantage(single[:, None], torch.ones(2, 1), np.arange(2))
    close(v1[:, 0], single, "rloo group of one: verl passes the score through", rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(single, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_shaped_group_advantages(verl, seed):
    """kl_in=reward for GRPO/RLOO: ours folds coef * sum_t kl_t into the score; verl subtracts coef * kl_t from the
    token-level scores (ray_trainer.apply_kl_penalty) and its estimators sum them over the reply."""
    g = gen(seed)
    G, coef = 4, 0.05
    scores = grouped_scores(g, 4, G)
    mask = right_padded_mask(g, 16, 6, empty=2)
    logp = -torch.rand(16, 6, generator=g, dtype=torch.float64)
    ref = logp + rand(g, 16, 6, scale=0.2)
    kl = kl_estimate(logp, ref, "k1") * mask
    shaped = kl_shaped_scores(scores, kl, mask, coef)
    tok = verl.core.compute_rewards(last_token_scores(scores, mask), logp * mask, ref * mask, coef)
    index = np.repeat(np.arange(4), G)
    v, _ = verl.core.compute_grpo_outcome_advantage(tok, mask, index)
    close(group_advantages(shaped, G)[:, None] * mask, v, "kl-shaped grpo advantages vs verl", rtol=1e-6, atol=1e-6)
    v, _ = verl.core.compute_rloo_outcome_advantage(tok, mask, index)
    ours = RLOO(RLOOConfig(kl_coef=coef)).advantages(scores.float(), mask.float(), kl.float(), None, G, coef, None)[0]
    close(ours, v, "kl-shaped RLOO.advantages vs verl", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_leave_one_out(verl, orl, seed):
    g = gen(seed)
    G = [2, 4, 5][seed]
    scores = grouped_scores(g, 4, G) if G >= 4 else rand(g, 4 * G)
    mask = right_padded_mask(g, 4 * G, 5, empty=1)
    ours = leave_one_out_advantages(scores, G)
    v, _ = verl.core.compute_rloo_outcome_advantage(last_token_scores(scores, mask), mask, np.repeat(np.arange(4), G))
    close(ours[:, None] * mask, v, "leave_one_out vs verl", rtol=1e-6, atol=1e-6)
    o, _ = orl_advantages(orl, scores, mask, "rloo", G)
    close(ours[:, None] * mask, o, "leave_one_out vs openrlhf", rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- REINFORCE++
@pytest.mark.parametrize("seed", SEEDS)
def test_discounted_returns(verl, orl, seed):
    g = gen(seed)
    mask = right_padded_mask(g, 9, 7, empty=2)
    rewards = rand(g, 9, 7) * mask
    gamma = [1.0, 0.95, 0.5][seed]
    ours = discounted_returns(rewards, mask, gamma)
    _, v_ret = verl.core.compute_reinforce_plus_plus_outcome_advantage(rewards, mask,
                                                                       config=verl.AlgoConfig(gamma=gamma))
    close(ours, v_ret, "discounted_returns vs verl")
    close(ours, orl.Maker.get_cumulative_returns(None, rewards, mask, gamma), "discounted_returns vs openrlhf")


def test_discounted_returns_interior_mask(verl):
    """Convention: verl carries the running return across masked positions inside a reply (multi-turn observation
    tokens); ours restarts there (our responses are right-padded, so only trailing positions are masked)."""
    rewards = torch.tensor([[1.0, 5.0, 2.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    _, v = verl.core.compute_reinforce_plus_plus_outcome_advantage(rewards, mask, config=verl.AlgoConfig(gamma=1.0))
    close(v, torch.tensor([[3.0, 0.0, 2.0]], dtype=torch.float64), "interior mask: verl carries the return")
    close(discounted_returns(rewards, mask, 1.0), torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64),
          "interior mask: ours restarts")


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_advantages(verl, orl, seed):
    g = gen(seed)
    B, T, coef = 12, 7, 0.05
    mask = right_padded_mask(g, B, T, empty=2)
    scores = rand(g, B)
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64)
    ref = logp + rand(g, B, T, scale=0.2)
    kl = kl_estimate(logp, ref, "k1") * mask
    gamma = [1.0, 0.99, 0.9][seed]
    algo = ReinforcePP(ReinforcePPConfig(gamma=gamma, kl_coef=coef))
    ours, _ = algo.advantages(scores, mask, kl, None, 4, coef, None)
    manual = masked_whiten(discounted_returns(token_rewards(scores, kl, mask, coef), mask, gamma), mask)
    close(ours, manual, "ReinforcePP.advantages = whiten(returns(token_rewards))", rtol=0, atol=0)
    tok = verl.core.compute_rewards(last_token_scores(scores, mask), logp * mask, ref * mask, coef)
    v, _ = verl.core.compute_reinforce_plus_plus_outcome_advantage(tok, mask, config=verl.AlgoConfig(gamma=gamma))
    close(ours, v, "reinforce++ advantages vs verl", **NEAR)
    # Convention: OpenRLHF whitens with the biased variance (/ n) and does not zero padding: ours = it * sqrt((n-1)/n)
    o, _ = orl_advantages(orl, scores, mask, "reinforce", 1, kl=kl, kl_coef=coef, gamma=gamma)
    n = mask.sum()
    # (OpenRLHF takes the whitening statistics in float32)
    close(ours, o * mask * torch.sqrt((n - 1) / n), "reinforce++ advantages vs openrlhf (x sqrt((n-1)/n))",
          rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------- loss aggregation
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", list(VERL_AGG))
def test_aggregate(verl, orl, seed, mode):
    g = gen(seed)
    mask = right_padded_mask(g, 10, 8, empty=3)
    x = leaf(rand(g, 10, 8))
    L = 11.0
    ours = aggregate(x, mask, mode, norm_tokens=L)
    gx = grad(ours, x)
    v = verl.core.agg_loss(x, mask, VERL_AGG[mode], loss_scale_factor=L)
    close(ours, v, f"aggregate {mode} vs verl", **NEAR)
    close(gx, grad(v, x), f"aggregate {mode} grad vs verl", **NEAR)
    # verl's trainer passes global_batch_size = the number of replies, empty ones included, to the sequence means
    if mode != "token_mean":
        v_all = verl.core.agg_loss(x, mask, VERL_AGG[mode], global_batch_size=mask.shape[0], loss_scale_factor=L)
        close(ours, v_all * mask.shape[0] / n_nonempty(mask), f"aggregate {mode} vs verl trainer (x n / n_nonempty)",
              **NEAR)
    if mode != "seq_mean_token_sum_norm":
        o = orl.loss.aggregate_loss(x, mask, token_level_loss=mode == "token_mean")
        close(ours, o, f"aggregate {mode} vs openrlhf", **NEAR)
        close(gx, grad(o, x), f"aggregate {mode} grad vs openrlhf", **NEAR)


# ------------------------------------------------------------------------------------------------ PPO policy loss
CLIP_CASES = [  # (clip_eps, clip_high, dual_clip_c): PPO, DAPO clip-higher, dual-clip PPO
    (0.2, None, 0.0), (0.2, 0.28, 0.0), (0.2, None, 3.0), (0.1, 0.3, 2.0)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_eps,clip_high,dual_c", CLIP_CASES)
@pytest.mark.parametrize("agg", list(VERL_AGG))
def test_clipped_policy_loss_vs_verl(verl, seed, clip_eps, clip_high, dual_c, agg):
    g = gen(seed)
    logp, old, adv, mask = policy_inputs(g)
    is_w = torch.rand(*mask.shape, generator=g, dtype=torch.float64) + 0.5 if seed == 2 else None
    L = 12.0
    x = leaf(logp)
    ours, stats = clipped_policy_loss(x, old, adv, mask, clip_eps, agg, is_w, dual_c, L, clip_high=clip_high)
    # verl always applies the dual clip (clip_ratio_c, default 3): ours off <=> an infinite c
    cfg = actor_config(verl, clip_eps, clip_eps if clip_high is None else clip_high,
                       dual_c if dual_c > 0 else math.inf, VERL_AGG[agg], L)
    v, metrics = verl.core.compute_policy_loss_vanilla(old, x, adv, mask, VERL_AGG[agg], cfg, is_w)
    name = f"clipped_policy_loss {agg} clip_high={clip_high} dual={dual_c} vs verl"
    close(ours, v, name, **NEAR)
    close(grad(ours, x), grad(v, x), name + " grad", **NEAR)
    close(stats["clip_frac"], metrics["actor/pg_clipfrac"], "clip_frac vs verl pg_clipfrac", **NEAR)
    if dual_c > 0:
        close(stats["dual_clip_frac"], metrics["actor/pg_clipfrac_lower"], "dual_clip_frac vs verl", **NEAR)
    # Convention: our approx_kl stat is the k3 estimate (old vs new), verl's ppo_kl the k1 estimate mean(old - new)
    F = verl.F
    close(stats["approx_kl"], F.masked_mean(verl.core.kl_penalty(logp, old, "k3"), mask), "approx_kl = k3", **NEAR)
    close(metrics["actor/ppo_kl"], F.masked_mean(verl.core.kl_penalty(old, logp, "k1"), mask).item(),
          "verl ppo_kl = k1", **NEAR)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_eps,clip_high,dual_c", CLIP_CASES)
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean"])
def test_clipped_policy_loss_vs_openrlhf(orl, seed, clip_eps, clip_high, dual_c, agg):
    g = gen(seed)
    logp, old, adv, mask = policy_inputs(g)
    x = leaf(logp)
    ours, stats = clipped_policy_loss(x, old, adv, mask, clip_eps, agg, None, dual_c, clip_high=clip_high)
    fn = orl.loss.PolicyLoss(clip_eps_low=clip_eps, clip_eps_high=clip_eps if clip_high is None else clip_high,
                             dual_clip=dual_c if dual_c > 0 else None, token_level_loss=agg == "token_mean")
    o, clip_ratio, *_ = fn(x, old, adv, action_mask=mask)
    name = f"clipped_policy_loss {agg} clip_high={clip_high} dual={dual_c} vs openrlhf"
    close(ours, o, name, **NEAR)
    close(grad(ours, x), grad(o, x), name + " grad", **NEAR)
    close(stats["clip_frac"], clip_ratio, "clip_frac vs openrlhf clip_ratio", **NEAR)


TRL_AGG = {"bnpo": "token_mean", "dapo": "token_mean", "grpo": "seq_mean", "dr_grpo": "seq_mean_token_sum_norm"}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", list(TRL_AGG))
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_clipped_policy_loss_vs_trl(trl, seed, loss_type, clip_high):
    g = gen(seed)
    logp, old, _, mask = policy_inputs(g)
    seq_adv = rand(g, mask.shape[0])  # TRL's GRPO advantages are per reply
    T = mask.shape[1]
    x = leaf(logp)
    ours, _ = clipped_policy_loss(x, old, seq_adv[:, None] * mask, mask, 0.2, TRL_AGG[loss_type], norm_tokens=T,
                                  clip_high=clip_high)
    t = trl_grpo_loss(trl, x, old, seq_adv, mask, loss_type, 0.2, 0.2 if clip_high is None else clip_high,
                      max_completion_length=T)
    # Convention: TRL's grpo and dr_grpo divide by every reply, empty ones included; ours by the non-empty ones
    factor = 1.0 if TRL_AGG[loss_type] == "token_mean" else mask.shape[0] / n_nonempty(mask)
    name = f"clipped_policy_loss vs trl {loss_type} clip_high={clip_high}"
    name += " (x n / n_nonempty)" if factor != 1 else ""
    close(ours, t * factor, name, **NEAR)
    close(grad(ours, x), grad(t, x) * factor, name + " grad", **NEAR)


@pytest.mark.parametrize("seed", SEEDS)
def test_kl_loss_term_vs_trl(trl, seed):
    """kl_in=loss with k3 (GRPO's beta term): TRL adds beta * k3 per token before its aggregation."""
    g = gen(seed)
    logp, old, _, mask = policy_inputs(g)
    ref = old + rand(g, *mask.shape, scale=0.3)
    seq_adv, beta = rand(g, mask.shape[0]), 0.04
    x = leaf(logp)
    ours = clipped_policy_loss(x, old, seq_adv[:, None] * mask, mask, 0.2, "token_mean")[0] \
        + beta * aggregate(kl_estimate(x, ref, "k3"), mask, "token_mean")
    t = trl_grpo_loss(trl, x, old, seq_adv, mask, "bnpo", 0.2, 0.2, beta=beta, ref=ref)
    close(ours, t, "policy loss + beta * k3 vs trl bnpo beta", **NEAR)
    close(grad(ours, x), grad(t, x), "policy loss + beta * k3 vs trl bnpo beta grad", **NEAR)


def test_policy_ratio_clamp_far_off_policy(verl, trl):
    """Convention: ours, verl (and OpenRLHF's ppo) clamp log(pi / pi_old) to [-20, 20] before exp; TRL does not. A
    token 25 nats above its old log-prob with A < 0 (no dual clip): ours = verl = -A e^20 with zero gradient (the
    clamp saturates), TRL = -A e^25."""
    old = torch.zeros(1, 1, dtype=torch.float64)
    x = leaf(torch.full((1, 1), 25.0, dtype=torch.float64))
    adv = torch.full((1, 1), -1.0, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.float64)
    ours = clipped_policy_loss(x, old, adv, mask, 0.2)[0]
    v = verl.core.compute_policy_loss_vanilla(old, x, adv, mask, "token-mean", actor_config(verl, clip_c=math.inf))[0]
    t = trl_grpo_loss(trl, x, old, adv[:, 0], mask, "bnpo", 0.2, 0.2)
    close(ours, v, "far off-policy token vs verl (both clamp at 20)", rtol=1e-12, atol=0)
    close(ours, t * math.exp(-5.0), "far off-policy token vs trl (unclamped: ours = trl * e^-5)", rtol=1e-12, atol=0)
    assert grad(ours, x).item() == 0.0 and grad(v, x).item() == 0.0 and grad(t, x).item() > 0


# ---------------------------------------------------------------------------------------------------- value loss
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_eps", [0.0, 0.2])
@pytest.mark.parametrize("agg", list(VERL_AGG))
def test_clipped_value_loss(verl, orl, seed, clip_eps, agg):
    g = gen(seed)
    mask = right_padded_mask(g, 10, 8, empty=2)
    old_v, returns = rand(g, 10, 8), rand(g, 10, 8)
    v = leaf(old_v + rand(g, 10, 8, scale=0.3))
    L = 9.0
    ours, stats = clipped_value_loss(v, old_v, returns, mask, clip_eps, agg, norm_tokens=L)
    gv = grad(ours, v)
    # Convention: clip_eps 0 turns our clipping off; verl has no off switch (an infinite range), OpenRLHF uses None
    p, frac = verl.core.compute_value_loss(v, returns, old_v, mask, clip_eps or math.inf, VERL_AGG[agg],
                                           loss_scale_factor=L)
    close(ours, p, f"clipped_value_loss eps={clip_eps} {agg} vs verl", **NEAR)
    close(gv, grad(p, v), f"clipped_value_loss eps={clip_eps} {agg} grad vs verl", **NEAR)
    # Convention: our value_clip_frac also needs |V - V_old| > eps (verl counts rounding-level "clips" too)
    assert stats["value_clip_frac"] <= frac + 1e-9
    if agg == "seq_mean_token_sum_norm":
        return  # OpenRLHF has token and sequence means only
    o = orl.loss.ValueLoss(clip_eps or None, token_level_loss=agg == "token_mean")(v, old_v, returns, action_mask=mask)
    close(ours, o, f"clipped_value_loss eps={clip_eps} {agg} vs openrlhf", **NEAR)
    close(gv, grad(o, v), f"clipped_value_loss eps={clip_eps} {agg} grad vs openrlhf", **NEAR)


# ---------------------------------------------------------------------------------------------------------- GSPO
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_low,clip_high", [(3e-4, 4e-4), (0.2, 0.3)])
@pytest.mark.parametrize("agg", ["seq_mean", "token_mean"])
def test_gspo(verl, orl, trl, seed, clip_low, clip_high, agg):
    g = gen(seed)
    logp, old, _, mask = policy_inputs(g, spread=0.05 if clip_low < 0.01 else 0.35)
    if clip_low < 0.01:  # some sequences inside the paper's tiny range, so both branches are exercised
        logp[: 4] = old[: 4] + rand(g, 4, mask.shape[1], scale=1e-4)
    seq_adv = rand(g, mask.shape[0])
    adv = seq_adv[:, None] * mask
    x = leaf(logp)
    ours, _ = gspo_policy_loss(x, old, adv, mask, clip_low, clip_high, agg)
    gx = grad(ours, x)
    name = f"gspo {agg} clip=({clip_low}, {clip_high})"
    v, _ = verl.core.compute_policy_loss_gspo(old, x, adv, mask, VERL_AGG[agg], actor_config(verl, clip_low, clip_high))
    close(ours, v, name + " vs verl", **NEAR)
    close(gx, grad(v, x), name + " grad vs verl", **NEAR)
    is_w = torch.rand(*mask.shape, generator=g, dtype=torch.float64) + 0.5  # truncated IS weights, per token
    ours_w = gspo_policy_loss(x, old, adv, mask, clip_low, clip_high, agg, is_weights=is_w)[0]
    v_w = verl.core.compute_policy_loss_gspo(old, x, adv, mask, VERL_AGG[agg], actor_config(verl, clip_low, clip_high),
                                             rollout_is_weights=is_w)[0]
    close(ours_w, v_w, name + " is_weights vs verl", **NEAR)
    close(grad(ours_w, x), grad(v_w, x), name + " is_weights grad vs verl", **NEAR)
    trl_type = "bnpo" if agg == "token_mean" else "grpo"
    t = trl_grpo_loss(trl, x, old, seq_adv, mask, trl_type, clip_low, clip_high, level="sequence")
    factor = 1.0 if agg == "token_mean" else mask.shape[0] / n_nonempty(mask)
    close(ours, t * factor, name + f" vs trl {trl_type} sequence-level", **NEAR)
    close(gx, grad(t, x) * factor, name + f" grad vs trl {trl_type} sequence-level", **NEAR)
    if agg == "seq_mean":  # OpenRLHF's gspo always takes per-reply means
        fn = orl.loss.PolicyLoss(clip_eps_low=clip_low, clip_eps_high=clip_high, policy_loss_type="gspo")
        o = fn(x, old, adv, action_mask=mask)[0]
        close(ours, o, name + " vs openrlhf", **NEAR)
        close(gx, grad(o, x), name + " grad vs openrlhf", **NEAR)


# --------------------------------------------------------------------------------------------------------- CISPO
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_low,clip_high", [(1.0, 4.0), (0.2, 0.28), (1.0, 0.5)])
@pytest.mark.parametrize("agg", list(VERL_AGG))
def test_cispo(verl, trl, seed, clip_low, clip_high, agg):
    g = gen(seed)
    logp, old, _, mask = policy_inputs(g, spread=1.0)  # ratios up to e^3: the cap at 5 is hit
    seq_adv = rand(g, mask.shape[0])
    adv = seq_adv[:, None] * mask
    L = 10.0
    x = leaf(logp)
    ours, stats = cispo_policy_loss(x, old, adv, mask, clip_low, clip_high, agg, L)
    gx = grad(ours, x)
    name = f"cispo {agg} clip=({clip_low}, {clip_high})"
    cfg = actor_config(verl, clip_low, clip_high, agg=VERL_AGG[agg], norm_tokens=L)
    v, metrics = verl.core.compute_policy_loss_cispo(old, x, adv, mask, VERL_AGG[agg], cfg)
    close(ours, v, name + " vs verl", **NEAR)
    close(gx, grad(v, x), name + " grad vs verl", **NEAR)
    close(stats["clip_frac"], metrics["actor/pg_clipfrac"], "cispo clip_frac vs verl", **NEAR)
    is_w = torch.rand(*mask.shape, generator=g, dtype=torch.float64) + 0.5
    ours_w = cispo_policy_loss(x, old, adv, mask, clip_low, clip_high, agg, L, is_weights=is_w)[0]
    v_w = verl.core.compute_policy_loss_cispo(old, x, adv, mask, VERL_AGG[agg], cfg, rollout_is_weights=is_w)[0]
    close(ours_w, v_w, name + " is_weights vs verl", **NEAR)
    close(grad(ours_w, x), grad(v_w, x), name + " is_weights grad vs verl", **NEAR)
    if clip_low == 1.0 and agg == "token_mean":
        # TRL caps the ratio itself at epsilon_high (no floor): our clip_high = TRL's epsilon_high - 1
        t = trl_grpo_loss(trl, x, old, seq_adv, mask, "cispo", 0.2, 1.0 + clip_high)
        close(ours, t, name + f" vs trl cispo epsilon_high={1 + clip_high}", **NEAR)
        close(gx, grad(t, x), name + f" grad vs trl cispo epsilon_high={1 + clip_high}", **NEAR)


# ------------------------------------------------------------------------------------------------------------ DPO
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_dpo_loss(orl, trl, seed, label_smoothing):
    g = gen(seed)
    n, beta = 9, [0.1, 0.5, 0.05][seed]
    c, r = leaf(rand(g, n, scale=20.0) - 40), leaf(rand(g, n, scale=20.0) - 40)
    rc, rr = rand(g, n, scale=20.0) - 40, rand(g, n, scale=20.0) - 40
    per_pair, margin = dpo_loss(c, r, rc, rr, beta, label_smoothing)
    ours = per_pair.mean()
    gc, gr = torch.autograd.grad(ours, (c, r))
    o, o_chosen, o_rejected = orl.loss.DPOLoss(beta, label_smoothing)(c, r, rc, rr)
    name = f"dpo_loss eps={label_smoothing}"
    close(ours, o, name + " vs openrlhf")
    close(torch.cat([gc, gr]), torch.cat(torch.autograd.grad(o, (c, r))), name + " grad vs openrlhf")
    close(margin, o_chosen - o_rejected, "dpo margin vs openrlhf rewards chosen - rejected")
    # TRL's sigmoid loss has no label smoothing (its label_smoothing belongs to the robust and EXO losses): conservative
    # DPO is (1 - eps) * TRL(chosen, rejected) + eps * TRL(rejected, chosen)
    t = (1 - label_smoothing) * trl_dpo_loss(trl, c, r, rc, rr, beta)
    if label_smoothing:
        t = t + label_smoothing * trl_dpo_loss(trl, r, c, rr, rc, beta)
    close(ours, t, name + " vs trl sigmoid")
    close(torch.cat([gc, gr]), torch.cat(torch.autograd.grad(t, (c, r))), name + " grad vs trl sigmoid")


# ---------------------------------------------------------------------------------------------- DAPO overlong
class _Replies(list):
    """A duck-typed DataProto of replies with the given lengths (2 prompt tokens, `width` response slots): what
    DAPORewardManager.__call__ reads, i.e. len(), .batch (no precomputed rm_scores) and data[i].batch /
    data[i].non_tensor_batch."""

    def __init__(self, lengths, width: int):
        super().__init__(NS(batch={"prompts": torch.zeros(2, dtype=torch.long),
                                   "attention_mask": torch.cat([torch.ones(2), torch.arange(width) < n]).long(),
                                   "responses": torch.zeros(width, dtype=torch.long)},
                            non_tensor_batch={"data_source": "parity", "reward_model": {"ground_truth": ""}})
                         for n in lengths)
        self.batch = {"responses": torch.zeros(len(self), width, dtype=torch.long)}


def verl_overlong(verl, lengths, max_len, buffer, factor, width=None):
    """verl's DAPORewardManager with a zero task score: each reply's reward is its overlong penalty."""
    manager = verl.DAPORewardManager(
        tokenizer=NS(decode=lambda ids, **kw: "", eos_token="</s>"), num_examine=0,
        compute_score=lambda **kw: 0.0, max_resp_len=max_len,
        overlong_buffer_cfg=NS(enable=True, len=buffer, penalty_factor=factor, log=False))
    return manager(_Replies([int(n) for n in lengths], width or max_len)).sum(-1)


@pytest.mark.parametrize("max_len,buffer,factor", [(32, 8, 1.0), (20, 20, 0.5), (50, 7, 2.0)])
def test_overlong_penalty(verl, orl, max_len, buffer, factor):
    lengths = torch.arange(1, max_len + 1)
    ours = overlong_penalty(lengths, max_len, buffer, factor)
    close(ours, verl_overlong(verl, lengths, max_len, buffer, factor),
          f"overlong_penalty ({max_len}, {buffer}, {factor}) vs verl DAPORewardManager")
    exp = NS(response_length=lengths, rewards=torch.zeros(len(lengths)))
    orl.length.apply_overlong_penalty([exp], max_len, buffer, factor)
    close(ours, exp.rewards, f"overlong_penalty ({max_len}, {buffer}, {factor}) vs openrlhf", rtol=1e-6, atol=1e-7)


def test_overlong_penalty_past_max_len(verl, orl):
    """Convention: past max_len (a reply longer than the budget; the trainer never makes one) ours and verl keep
    falling linearly, OpenRLHF stops at -factor."""
    lengths = torch.tensor([33, 40])
    ours = overlong_penalty(lengths, 32, 8, 1.0)
    close(ours, verl_overlong(verl, lengths, 32, 8, 1.0, width=40), "overlong past max_len vs verl")
    assert ours.min() < -1.0
    exp = NS(response_length=lengths, rewards=torch.zeros(2))
    orl.length.apply_overlong_penalty([exp], 32, 8, 1.0)
    close(exp.rewards, ours.clamp(min=-1.0), "overlong past max_len: openrlhf = max(ours, -factor)")
