"""The (name, tensor) stream a rollout engine needs after a policy update, and the checks applied before it is pushed.

`named_weights_for_sync` turns the trainer's model (plain transformers, or a peft LoRA model) into checkpoint-style
names (`model.layers.0.self_attn.q_proj.weight`, ...) with LoRA merged on the fly: W + sum over active adapters of
peft's own `get_delta_weight` (which knows the scaling and fan_in_fan_out layout). Nothing in the training model is
mutated, so the LoRA reference (adapter disabled) stays the pristine base. Only LoRA-wrapped modules cost a matmul;
every other tensor is yielded as a detached view, without a copy.

`checkpoint_shapes` / `validate_weights` let an engine refuse a bad stream (unknown name, wrong shape, missing
weight) *before* it touches its model, so a failed sync leaves the engine as it was. After a sync, the engine reads
back a fixed sample of its parameters (`sync_sample`: embeddings, final norm, the first and last layer, fused
projections summed over their parts) and compares order-free float64 checksums with the pushed tensors
(`expected_checksums`, `checksum_mismatches`); a linear layer the CPU backend packed into a oneDNN handle (its weight
left empty) is checked by a seeded probe input instead (`probe_input`, `probe_error`). A weight that never reached
the engine fails the run by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from safetensors import safe_open

PEFT_ROOT_PREFIXES = ("base_model.model.",)


def _unwrap_peft(model: nn.Module) -> Tuple[nn.Module, bool]:
    """(the transformers model with LoRA layers injected, whether it is a peft model)."""
    if isinstance(model, PeftModel):
        return model.get_base_model(), True
    return model, False


def _lora_delta(module: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the active adapters' delta weights of a peft LoRA layer (None when nothing is to be added)."""
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return None  # adapters off, or already merged into the base weight
    if any(getattr(module, "use_dora", {}).get(a, False) for a in module.active_adapters):
        raise NotImplementedError(f"weight sync: DoRA adapters are not supported ({type(module).__name__})")
    known = set(getattr(module, "lora_A", {}).keys()) | set(getattr(module, "lora_embedding_A", {}).keys())
    delta = None
    for adapter in module.active_adapters:
        if adapter not in known:
            continue
        d = module.get_delta_weight(adapter)
        delta = d if delta is None else delta + d
    return delta


def hf_name(name: str) -> str:
    """peft parameter name -> the transformers checkpoint name vLLM's `load_weights` accepts."""
    for prefix in PEFT_ROOT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def named_weights_for_sync(model: nn.Module) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields (checkpoint name, tensor) for every parameter of `model`, LoRA merged, adapter tensors left out.

    Tied parameters appear once (under their first name, e.g. `model.embed_tokens.weight`), as in the checkpoint
    saved by transformers. Tensors stay on the model's device and dtype; the engine converts on load.
    """
    inner, is_peft = _unwrap_peft(model)
    lora_modules: Dict[str, nn.Module] = {}
    saved_modules: Dict[str, nn.Module] = {}
    if is_peft:
        for mname, mod in inner.named_modules():
            if isinstance(mod, LoraLayer):
                lora_modules[mname] = mod
            elif isinstance(mod, ModulesToSaveWrapper):
                saved_modules[mname] = mod
    for name, param in inner.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if ".lora_" in f".{name}" or ".lora_magnitude_vector." in name:
            continue  # adapter tensors: folded into the base weight below
        if saved_modules:
            wrapper = next((m for p, m in saved_modules.items() if name.startswith(p + ".")), None)
            if wrapper is not None:
                wp = next(p for p, m in saved_modules.items() if m is wrapper)
                active = getattr(wrapper, "active_adapter", None)
                active = active[0] if isinstance(active, (list, tuple)) else active
                rest = name[len(wp) + 1:]
                if getattr(wrapper, "disable_adapters", False) or active not in wrapper.modules_to_save:
                    if not rest.startswith("original_module."):
                        continue
                    name = f"{wp}.{rest[len('original_module.'):]}"
                else:
                    prefix = f"modules_to_save.{active}."
                    if not rest.startswith(prefix):
                        continue
                    name = f"{wp}.{rest[len(prefix):]}"
                yield hf_name(name), param.detach()
                continue
        tensor = param.detach()
        if owner.endswith(".base_layer") and leaf == "weight":
            lora = lora_modules.get(owner[: -len(".base_layer")])
            delta = _lora_delta(lora) if lora is not None else None
            if delta is not None:
                tensor = tensor + delta.to(tensor.dtype)
        yield hf_name(name), tensor


# ------------------------------------------------------------------------------------------------- validation
def checkpoint_shapes(model_dir: str) -> Optional[Dict[str, Tuple[int, ...]]]:
    """{name: shape} of every tensor in a local safetensors checkpoint (None when the directory has none)."""
    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
    if not files:
        return None
    shapes: Dict[str, Tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                shapes[k] = tuple(sf.get_slice(k).get_shape())
    if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes and ties_lm_head(model_dir):
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]  # accepted, then skipped by vLLM
    return shapes


def ties_lm_head(model_dir: str) -> bool:
    """Whether the checkpoint's config ties lm_head to the input embeddings (vLLM then ignores lm_head.weight)."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return False
    cfg = json.loads(config.read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False)))


def validate_weights(weights: Iterable[Tuple[str, torch.Tensor]], shapes: Optional[Dict[str, Tuple[int, ...]]],
                     optional: Iterable[str] = ()) -> List[Tuple[str, torch.Tensor]]:
    """Materializes the stream and raises ValueError on an unknown name, a wrong shape, a duplicate or a missing
    weight (a partial update would leave fused layers such as qkv half-loaded). `shapes=None` checks duplicates only."""
    out: List[Tuple[str, torch.Tensor]] = []
    seen = set()
    errors: List[str] = []
    for name, tensor in weights:
        if not isinstance(tensor, torch.Tensor):
            errors.append(f"{name}: not a tensor ({type(tensor).__name__})")
            continue
        if name in seen:
            errors.append(f"{name}: given twice")
        seen.add(name)
        if shapes is not None:
            if name not in shapes:
                errors.append(f"{name}: unknown weight name")
            elif tuple(tensor.shape) != shapes[name]:
                errors.append(f"{name}: shape {tuple(tensor.shape)} != expected {shapes[name]}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum(dtype=torch.float32))):  # NaN/inf spread
            errors.append(f"{name}: contains NaN/inf")
        out.append((name, tensor))
    if shapes is not None:
        missing = sorted(set(shapes) - seen - set(optional))
        if missing:
            errors.append(f"missing {len(missing)} weight(s): {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if errors:
        raise ValueError("weight sync refused, nothing was applied: " + "; ".join(errors[:12])
                         + (f" (+{len(errors) - 12} more)" if len(errors) > 12 else ""))
    return out


# ---------------------------------------------------------------------------------------- verified sync (read-back)
# vLLM's kernels fuse some projections: the engine parameter is the row-wise concatenation of the checkpoint's parts,
# so its checksums are the sums of theirs (the checksums below do not depend on element order).
FUSED_PARTS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def checksum(t: torch.Tensor) -> Tuple[float, float, int]:
    """(sum, sum of |x|, numel) in float64: order-free, so a repacked kernel layout gives the same values."""
    d = t.detach()
    return (float(d.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(d, 1, dtype=torch.float64)),
            int(t.numel()))


def engine_parts(engine_name: str, pushed: Iterable[str]) -> Optional[List[str]]:
    """The pushed (checkpoint) names whose concatenation is the engine parameter ``engine_name``; None if unknown."""
    pushed = set(pushed)
    if engine_name in pushed:
        return [engine_name]
    for fused, parts in FUSED_PARTS.items():
        if f".{fused}." in engine_name:
            names = [engine_name.replace(f".{fused}.", f".{part}.") for part in parts]
            return names if all(n in pushed for n in names) else None
    return None


def sync_sample(engine_names: Sequence[str], pushed: Iterable[str], layers: int = 2) -> List[str]:
    """A fixed sample of engine parameters to read back after every sync: the embeddings, the final norm, and every
    parameter of the first and the last decoder layer that maps onto pushed tensors (LoRA targets included)."""
    pushed = list(pushed)
    idx = sorted({int(n.split(".layers.")[1].split(".")[0]) for n in engine_names if ".layers." in n})
    keep_layers = {idx[0], idx[-1]} if idx else set()
    out = []
    for n in engine_names:
        in_layer = ".layers." in n and int(n.split(".layers.")[1].split(".")[0]) in keep_layers
        if (in_layer or ".layers." not in n) and engine_parts(n, pushed) is not None:
            out.append(n)
    return out


def expected_checksums(sample: Sequence[str], weights: Dict[str, torch.Tensor],
                       dtypes: Dict[str, torch.dtype]) -> Dict[str, Tuple[float, float, int]]:
    """What the engine should hold after loading ``weights``: each pushed tensor cast to the engine parameter's dtype
    (the load copies into it), summed over the fused parts."""
    out = {}
    for name in sample:
        total = [0.0, 0.0, 0]
        for part in engine_parts(name, weights) or []:
            s, a, n = checksum(weights[part].to(dtypes[name]))
            total = [total[0] + s, total[1] + a, total[2] + n]
        out[name] = (total[0], total[1], total[2])
    return out


def checksum_mismatches(expected: Dict[str, Tuple[float, float, int]], got: Dict[str, Optional[Tuple[float, ...]]],
                        rel: float = 1e-6) -> List[str]:
    """Names whose engine checksum differs from the expected one beyond float64 summation-order noise."""
    bad = []
    for name, (s, a, n) in expected.items():
        g = got.get(name)
        if g is None or int(g[2]) != n:
            bad.append(name)
            continue
        scale = max(a, 1e-12)
        if abs(g[0] - s) > rel * scale or abs(g[1] - a) > rel * scale:
            bad.append(name)
    return bad


def probe_input(name: str, pushed: Dict[str, torch.Tensor], rows: int = 4) -> torch.Tensor:
    """A fixed (seeded) float32 input for the linear layer ``name`` (its in-features from the pushed weight)."""
    parts = engine_parts(name, pushed) or [name]
    g = torch.Generator().manual_seed(1234)
    return torch.randn(rows, pushed[parts[0]].shape[1], generator=g)


def probe_error(engine_out: torch.Tensor, x: torch.Tensor, name: str, pushed: Dict[str, torch.Tensor],
                dtype: Optional[torch.dtype] = None) -> float:
    """max |engine(x) - x @ W^T (+ b)| / max |x @ W^T (+ b)|, W (and b) the pushed parts concatenated, cast to the
    engine's dtype first (what the load stored)."""
    parts = engine_parts(name, pushed) or [name]
    dt = dtype or engine_out.dtype
    w = torch.cat([pushed[p].to(dt).float() for p in parts])
    want = x.to(dt).float() @ w.T
    biases = [p[: -len("weight")] + "bias" for p in parts]
    if all(b in pushed for b in biases):
        want = want + torch.cat([pushed[b].to(dt).float() for b in biases])
    return float((engine_out.float() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def probe_tolerance(dtype: torch.dtype) -> float:
    """Relative output error allowed for a layer computed by another kernel: float32 ~1e-6 (1e-4 allowed), 16-bit
    ~4e-3 per rounding (3e-2 allowed)."""
    return 1e-4 if dtype == torch.float32 else 3e-2
