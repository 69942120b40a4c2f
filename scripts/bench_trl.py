"""The TRL side of the online benchmark: TRL's GRPOTrainer on the same model, prompts, reward and batch shape as rlhf.

    python scripts/bench_trl.py SPEC.json OUT.json

Run by scripts/bench.py in its own subprocess (so its peak RSS is its own); SPEC.json is written there. The prompts in
SPEC are already chat-formatted strings (rlhf.dataset.chat.format_prompt with the rlhf system prompt) in the order
rlhf's PromptSampler draws them, and the dataset is not shuffled, so RL step i sees the same prompts on both sides.

How TRL's batch knobs are set so that one TRL generation batch is one rlhf RL step:
  num_generations             = samples_per_prompt          (group size)
  per_device_train_batch_size = minibatch_size              (completions per optimizer step)
  gradient_accumulation_steps = 1                           (one forward/backward per optimizer step, like rlhf)
  steps_per_generation        = prompts x samples / minibatch (so generation_batch_size = prompts x samples)
  num_iterations              = epochs
  max_steps                   = steps x steps_per_generation x num_iterations (TRL counts optimizer steps)
Because gradient_accumulation_steps is not a multiple of steps_per_generation x num_iterations, TRL computes the
old-policy log-probs for the whole generation batch before the updates, as rlhf's experience phase does.

SPEC["use_vllm"]: TRL's colocated vLLM engine (`use_vllm=True, vllm_mode="colocate"`) instead of transformers generate.

OUT.json holds one record per RL step (generation batch): wall seconds, generate seconds (transformers: the timed
`trainer.model.generate`; vLLM: the timed `trainer.vllm_generation.generate`, and `time/sync` = its `sync_weights`),
reward, EM, generated tokens, plus TRL's own log history, the effective config and the set-up seconds (`setup_s`: from
the start to a ready trainer; `trainer_init_s`: GRPOTrainer's constructor, with vLLM the engine's start-up).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_path = Path(sys.argv[2])
    t_start = time.perf_counter()

    import torch
    import transformers
    import trl
    from rlhf.dataset.table import dataset_from_columns
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.task.math_grading import is_correct

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    P, G, MB = spec["prompts_per_step"], spec["samples_per_prompt"], spec["minibatch_size"]
    if (P * G) % MB:
        raise ValueError("minibatch_size must divide prompts_per_step x samples_per_prompt")
    steps_per_generation = P * G // MB
    optimizer_steps = spec["steps"] * steps_per_generation * spec["epochs"]

    model_dir = spec["model_dir"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec.get("dtype", "float32")]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)  # bf16=False below: no autocast, like rlhf
    peft_config = None
    if spec.get("lora"):
        lc = spec["lora"]
        peft_config = LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                 target_modules=list(lc["target_modules"]), task_type="CAUSAL_LM")
    load_s = time.perf_counter() - t_start

    n_prompts = spec["steps"] * P
    data = dataset_from_columns({"prompt": spec["prompts"][:n_prompts], "answer": spec["answers"][:n_prompts]})

    records = []  # one per generation batch (= one rlhf RL step)
    gen_times = []

    def exact_match(prompts, completions, answer, completion_ids=None, **kw):
        ok = [is_correct(c, a, "flexible") for c, a in zip(completions, answer)]
        records.append({
            "t_reward": time.perf_counter(),
            "completions": len(completions),
            "gen_tokens": int(sum(len(c) for c in completion_ids)) if completion_ids is not None else None,
            "reward_mean": sum(ok) / max(len(ok), 1),
            "em_flexible": sum(ok) / max(len(ok), 1),
        })
        return [1.0 if o else 0.0 for o in ok]

    step_ends = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())  # boundary 0

        def on_step_end(self, args, state, control, **kw):
            step_ends.append(time.perf_counter())

    out_dir = spec["out_dir"]
    args = GRPOConfig(
        output_dir=out_dir, use_cpu=spec.get("device", "cpu") == "cpu", bf16=False, fp16=False,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=spec["adam_beta2"], adam_epsilon=1e-8, max_grad_norm=spec["max_grad_norm"],
        per_device_train_batch_size=MB, gradient_accumulation_steps=1, steps_per_generation=steps_per_generation,
        num_generations=G, num_iterations=spec["epochs"], max_steps=optimizer_steps,
        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_p=spec["top_p"],
        top_k=spec["top_k"], beta=spec["beta"], epsilon=spec["clip_eps"], scale_rewards="group", loss_type="bnpo",
        gradient_checkpointing=False, shuffle_dataset=False, seed=spec["seed"], data_seed=spec["seed"],
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        # spec["use_vllm"]: TRL's colocated vLLM engine (one LLM in this process, weights pushed after each step)
        use_vllm=bool(spec.get("use_vllm")),
        **({"vllm_mode": "colocate", "vllm_gpu_memory_utilization": spec.get("vllm_memory_utilization", 0.3),
            "vllm_enable_sleep_mode": False} if spec.get("use_vllm") else {}),
    )
    t_init = time.perf_counter()
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=args, train_dataset=data,
                          processing_class=tok, peft_config=peft_config, callbacks=[Clock()])
    trainer_init_s = time.perf_counter() - t_init  # with use_vllm: includes the colocated engine's start-up

    sync_times = []

    def timed(obj, name, into):
        """Wraps obj.name (an instance attribute shadowing the method) so every call's wall time goes into `into`."""
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                into.append(time.perf_counter() - t0)

        setattr(obj, name, wrapper)

    if args.use_vllm:
        # GRPOTrainer._generate_single_turn calls vllm_generation.sync_weights() (when the optimizer step changed:
        # once per generation batch) and then vllm_generation.generate(...) once per generation batch
        timed(trainer.vllm_generation, "generate", gen_times)
        timed(trainer.vllm_generation, "sync_weights", sync_times)
    else:
        # transformers generate inside TRL (the model object TRL unwraps for generation is trainer.model)
        timed(trainer.model, "generate", gen_times)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    setup_s = time.perf_counter() - t_start

    error = None
    try:
        trainer.train()
    except Exception as e:  # report, do not hide
        error = f"{type(e).__name__}: {e}"

    # RL step i spans optimizer steps (i*S, (i+1)*S]; S = steps_per_generation x epochs
    S = steps_per_generation * spec["epochs"]
    t0 = step_ends[0] if step_ends else t_start
    steps = []
    for i, rec in enumerate(records):
        a, b = i * S, (i + 1) * S
        if b >= len(step_ends):
            break
        row = dict(rec)
        row["step"] = i + 1
        row["step_seconds"] = step_ends[b] - step_ends[a]
        row["t_end"] = step_ends[b] - t0
        row["time/generate"] = gen_times[i] if i < len(gen_times) and len(gen_times) == len(records) else None
        row["time/sync"] = sync_times[i] if i < len(sync_times) and len(sync_times) == len(records) else None
        row.pop("t_reward")
        steps.append(row)
    opt = trainer.optimizer
    result = {
        "framework": "trl", "trl_version": trl.__version__, "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "load_s": load_s, "setup_s": setup_s,
        "trainer_init_s": trainer_init_s, "use_vllm": bool(args.use_vllm),
        "rollout_engine": "vllm colocate" if args.use_vllm else "transformers generate",
        "generate_calls": len(gen_times), "sync_weights_calls": len(sync_times),
        "trainable_params": trainable, "total_params": total,
        "optimizer": type(getattr(opt, "optimizer", opt)).__name__,
        "effective": {"generation_batch_size": args.generation_batch_size,
                      "steps_per_generation": args.steps_per_generation,
                      "per_device_train_batch_size": args.per_device_train_batch_size,
                      "gradient_accumulation_steps": args.gradient_accumulation_steps,
                      "num_generations": args.num_generations, "num_iterations": args.num_iterations,
                      "max_steps": args.max_steps, "beta": args.beta, "loss_type": args.loss_type,
                      "optim": str(args.optim), "lr_scheduler_type": str(args.lr_scheduler_type),
                      "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16},
        "optimizer_steps": trainer.state.global_step,
        "steps": steps,
        "log_history": trainer.state.log_history,
        "maxrss_kb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "error": error,
    }
    out_path.write_text(json.dumps(result, indent=1, default=str))
    if error:
        print(error, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
