"""LLM judges and reward models.

prompts      one-line JSON rubric, demonstrations, prefix/suffix token assembly, verdict token ids
prefix_forward next-token logits with/without a reused KV cache of the shared prefix
verdict      pure math: verdict softmax, symmetric pairwise probability, expected score
rubric_judge training-free judge (pairwise / pointwise) on a causal LM
lora_judge   the same judge with a trained LoRA adapter (base frozen)
factory      reward.name -> judge/RM (load a checkpoint or train first)
io           atomic directory saves, pair filtering, batch sampling, metric sinks
The Bradley-Terry RM lives in rlhf/judge/bt_rm.py (a scorer like the judges); the RL reward wrapper in rlhf/reward/judge_reward.py.
"""
