"""Atomic checkpoints (temp dir + rename, COMPLETE marker) and exact resume state, with no pickle anywhere.

Layout of <run_dir>/checkpoints/step_000010/:
  adapter/ (LoRA, peft format)  or  model/ (full weights, transformers format, safetensors)
  value_head.safetensors        (PPO)
  trainer_state.json            optimizer, scheduler, KL controller, RNG states, data position, step, evals: the
  trainer_state.safetensors     structure in JSON, every tensor / ndarray in safetensors (see save_state)
  COMPLETE                      written last; a directory without it is never picked
(DeepSpeed adds deepspeed/ and rng_rank<r>.json/.safetensors, see rlhf.backend.zero.)

Older versions wrote trainer_state.pt with torch.save; loading it needs pickle, and a pickle can run any code, so such a
checkpoint is refused (load_trainer_state). A save killed half-way leaves checkpoints/.tmp-step_*: rank 0 removes those
when a run starts (resolve_resume, which every start goes through).

State files (save_state / load_state): `<stem>.json` holds {"format": STATE_FORMAT, "version": 1, "state": ...} where
JSON-native values (str, int, finite float, bool, None, list, dict with str keys) stand for themselves and every other
value is a marker object, named by its one key that starts with "$":
  {"$tuple": [...]}                      a tuple (python's random.setstate needs tuples back)
  {"$float": "inf" | "-inf" | "nan"}     a non-finite float
  {"$dict": [[key, value], ...]}         a dict with a non-str key (optimizer state's int param ids) or a "$" key
  {"$tensor": name, "dtype": "float32", "shape": [...]}    a torch tensor, stored in <stem>.safetensors as name
  {"$ndarray": name, "dtype": "uint32", "shape": [...]}    a numpy array (numpy's RNG state), idem
The loader reads JSON and safetensors only, checks every marker, dtype, shape and tensor name, and refuses anything
else naming the file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from rlhf.backend.distributed import env_world
from rlhf.model.policy import Policy

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")
STALE_TMP = re.compile(r"^\.tmp-step_\d+-")  # save_checkpoint's temp dirs (mkdtemp suffix, or "-ds" for DeepSpeed)
TRAINER_STATE = "trainer_state"  # stem: trainer_state.json + trainer_state.safetensors
LEGACY_TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = "rlhf.state"
STATE_VERSION = 1
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_ARRAY_KEYS = frozenset(("dtype", "shape"))


# --------------------------------------------------------------------------------------- state files (no pickle)
def _sub(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def _float_json(x: float) -> Any:
    x = float(x)
    if math.isfinite(x):
        return x
    return {"$float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}


def _encode(obj: Any, path: str, tensors: Dict[str, torch.Tensor]) -> Any:
    """The JSON form of obj (see the module docstring); tensors and arrays go into `tensors`."""
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _float_json(obj)
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized or obj.device.type == "meta":
            raise TypeError(f"save_state: {path}: cannot store a {obj.layout} / quantized / meta tensor")
        name = f"t{len(tensors)}"
        # a contiguous CPU copy of its own (safetensors refuses tensors that share storage)
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": name, "dtype": str(obj.dtype).removeprefix("torch."), "shape": list(obj.shape)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf" or not obj.dtype.isnative:
            raise TypeError(f"save_state: {path}: cannot store a numpy array of dtype {obj.dtype}")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.array(obj, copy=True, order="C"))
        return {"$ndarray": name, "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, _sub(path, i), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, _sub(path, i), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {str(k): _encode(v, _sub(path, k), tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if k is not None and not isinstance(k, (str, int, float)):  # bool is an int
                raise TypeError(f"save_state: {path}: unsupported dict key {k!r} of type {type(k).__name__}")
            key = _float_json(k) if isinstance(k, float) else k
            items.append([key, _encode(v, _sub(path, k), tensors)])
        return {"$dict": items}
    raise TypeError(f"save_state: {path}: unsupported type {type(obj).__module__}.{type(obj).__qualname__}")


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_state(directory: Path, stem: str, obj: Any) -> Tuple[Path, Path]:
    """Write obj as <stem>.json (structure) + <stem>.safetensors (tensors, numpy arrays). No pickle.

    Supported: dict (keys str / int / float / bool / None), list, tuple, str, int, float (inf / nan too), bool, None,
    torch.Tensor (any dtype, 0-dim too; stored as a contiguous CPU copy), numpy arrays of bool / int / uint / float.
    Anything else raises TypeError naming its key path. Returns the two paths."""
    directory = Path(directory)
    tensors: Dict[str, torch.Tensor] = {}
    doc = {"format": STATE_FORMAT, "version": STATE_VERSION, "state": _encode(obj, stem, tensors)}
    text = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    json_path, st_path = directory / f"{stem}.json", directory / f"{stem}.safetensors"
    _write_atomic(st_path, lambda p: save_file(tensors, str(p), metadata={"format": STATE_FORMAT}))
    _write_atomic(json_path, lambda p: p.write_text(text + "\n", encoding="utf-8"))
    return json_path, st_path


class _Decoder:
    def __init__(self, json_path: Path, tensors: Dict[str, torch.Tensor]):
        self.file, self.tensors, self.used = json_path, tensors, set()

    def fail(self, where: str, what: str) -> ValueError:
        return ValueError(f"{self.file}: {where}: {what}; not a valid state file")

    def key(self, node: Any, where: str) -> Any:
        if isinstance(node, dict) and set(node) == {"$float"}:
            return self.value(node, where)
        if node is None or isinstance(node, (str, int, float)):
            return node
        raise self.fail(where, f"a dict key must be a str, int, float, bool or null, got {type(node).__name__}")

    def array(self, node: Dict[str, Any], marker: str, where: str) -> torch.Tensor:
        if set(node) != {marker} | _ARRAY_KEYS:
            raise self.fail(where, f"{marker} takes exactly the keys {sorted(_ARRAY_KEYS)}, "
                                   f"got {sorted(set(node) - {marker})}")
        name, dtype, shape = node[marker], node["dtype"], node["shape"]
        if not isinstance(name, str) or name not in self.tensors:
            raise self.fail(where, f"{marker} refers to {name!r}, which is not in the safetensors file")
        if name in self.used:
            raise self.fail(where, f"{marker} {name!r} is referred to twice")
        if not isinstance(dtype, str) or not isinstance(shape, list) or \
                not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise self.fail(where, f"{marker}: malformed dtype / shape")
        t = self.tensors[name]
        self.used.add(name)
        got = str(t.dtype).removeprefix("torch.")
        if marker == "$ndarray":
            try:
                arr = t.numpy()
            except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16, ...)
                raise self.fail(where, f"$ndarray {name!r} is {got}, which numpy cannot hold") from None
            got = str(arr.dtype)
        if got != dtype or list(t.shape) != shape:
            raise self.fail(where, f"{name} is {got} {list(t.shape)} in the safetensors file, {dtype} {shape} here")
        return arr if marker == "$ndarray" else t

    def value(self, node: Any, where: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.value(v, _sub(where, i)) for i, v in enumerate(node)]
        if not isinstance(node, dict):
            raise self.fail(where, f"unexpected JSON value of type {type(node).__name__}")
        markers = [k for k in node if k.startswith("$")]
        if not markers:
            return {k: self.value(v, _sub(where, k)) for k, v in node.items()}
        if len(markers) > 1:
            raise self.fail(where, f"more than one marker {markers}")
        marker = markers[0]
        body = node[marker]
        if marker in ("$tensor", "$ndarray"):
            return self.array(node, marker, where)
        if len(node) != 1:
            raise self.fail(where, f"{marker} takes no other keys, got {sorted(k for k in node if k != marker)}")
        if marker == "$tuple":
            if not isinstance(body, list):
                raise self.fail(where, "$tuple needs a list")
            return tuple(self.value(v, _sub(where, i)) for i, v in enumerate(body))
        if marker == "$float":
            if body not in _NON_FINITE:
                raise self.fail(where, f"$float must be one of {sorted(_NON_FINITE)}, got {body!r}")
            return _NON_FINITE[body]
        if marker == "$dict":
            if not isinstance(body, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in body):
                raise self.fail(where, "$dict needs a list of [key, value] pairs")
            out: Dict[Any, Any] = {}
            for k, v in body:
                key = self.key(k, where)
                if key in out:
                    raise self.fail(where, f"duplicate key {key!r}")
                out[key] = self.value(v, _sub(where, key))
            return out
        raise self.fail(where, f"unknown marker {marker!r}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"bare {name} (non-finite floats are written as {{\"$float\": ...}})")


def _pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def load_state(directory: Path, stem: str) -> Any:
    """Read what save_state wrote (JSON + safetensors only: nothing here can run code). A missing file raises
    FileNotFoundError, anything malformed or unknown ValueError naming the file."""
    directory = Path(directory)
    json_path, st_path = directory / f"{stem}.json", directory / f"{stem}.safetensors"
    for p in (json_path, st_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"), parse_constant=_no_constants, object_pairs_hook=_pairs)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{json_path}: not a valid state file ({e})") from None
    if not isinstance(doc, dict) or set(doc) != {"format", "version", "state"} or doc["format"] != STATE_FORMAT:
        raise ValueError(f"{json_path}: not a valid state file (expected an object with format {STATE_FORMAT!r}, "
                         "version and state)")
    if type(doc["version"]) is not int or doc["version"] != STATE_VERSION:
        raise ValueError(f"{json_path}: state format version {doc['version']!r}; this version reads {STATE_VERSION}")
    try:
        tensors = load_file(str(st_path))
    except Exception as e:  # safetensors' own error type for a truncated or corrupt file
        raise ValueError(f"{st_path}: not a valid safetensors file ({e})") from None
    dec = _Decoder(json_path, tensors)
    try:
        state = dec.value(doc["state"], stem)
    except RecursionError:
        raise ValueError(f"{json_path}: nested too deeply; not a valid state file") from None
    unused = sorted(set(tensors) - dec.used)
    if unused:
        raise ValueError(f"{json_path}: {st_path.name} holds tensors the state does not refer to: {unused[:5]}")
    return state


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_complete(run_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "COMPLETE").is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    done = list_complete(run_dir)
    return done[-1][1] if done else None


def save_checkpoint(run_dir: Path, step: int, policy: Policy, tokenizer, trainer_state: Dict[str, Any],
                    keep: int) -> Path:
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=root))
    try:
        write_model_files(tmp, policy, tokenizer)
        save_state(tmp, TRAINER_STATE, {**trainer_state, "step": step, "rng": rng_state()})
        finalize_checkpoint(tmp, final, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep)
    return final


def write_model_files(ckpt_dir: Path, policy: Policy, tokenizer, model_state: Optional[Dict[str, torch.Tensor]] = None,
                      value_head_state: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """The weights part of the layout: adapter/ or model/ (+ tokenizer) and value_head.safetensors.

    model_state / value_head_state replace the live modules' state dicts (DeepSpeed ZeRO-3 passes gathered copies)."""
    target = ckpt_dir / ("adapter" if policy.is_lora else "model")
    extra: Dict[str, Any] = {} if model_state is None else {"state_dict": model_state}
    if policy.is_lora:
        extra["selected_adapters"] = ["default"]  # the actor's; a judge adapter on the same base saves itself
    policy.model.save_pretrained(str(target), safe_serialization=True, **extra)
    if not policy.is_lora:
        tokenizer.save_pretrained(str(target))
    if policy.value_head is not None:
        state = policy.value_head.state_dict() if value_head_state is None else value_head_state
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(ckpt_dir / "value_head.safetensors"))


def finalize_checkpoint(tmp: Path, final: Path, step: int) -> None:
    """COMPLETE marker last, then an atomic rename of the finished temp dir onto step_XXXXXX."""
    (tmp / "COMPLETE").write_text(f"{step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for _, old in list_complete(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights_into(policy: Policy, ckpt: Path) -> None:
    if policy.is_lora:
        state = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
        set_peft_model_state_dict(policy.model, state)
    else:
        files = sorted((ckpt / "model").glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"resume: no model weights in {ckpt / 'model'}")
        state: Dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        result = policy.model.load_state_dict(state, strict=False)
        tied = bool(getattr(policy.model.config, "tie_word_embeddings", False))
        missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if missing or result.unexpected_keys:
            raise KeyError(f"resume: checkpoint {ckpt} does not match the model (missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]})")
    if policy.value_head is not None:
        policy.value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))


def refuse_legacy_pickle(ckpt: Path) -> None:
    """FileNotFoundError (one line, `resume: ...`) when ckpt has an old trainer_state.pt but no trainer_state.json."""
    ckpt = Path(ckpt)
    if (ckpt / LEGACY_TRAINER_STATE).exists() and not (ckpt / f"{TRAINER_STATE}.json").exists():
        raise FileNotFoundError(
            f"resume: {ckpt / LEGACY_TRAINER_STATE} is a pickle (written by an older version); pickles can run code, "
            f"so it is not loaded. Start a fresh run or resume from a checkpoint with {TRAINER_STATE}.json")


def load_trainer_state(ckpt: Path) -> Dict[str, Any]:
    """The trainer state dict save_checkpoint wrote (JSON + safetensors; an old trainer_state.pt is refused)."""
    ckpt = Path(ckpt)
    refuse_legacy_pickle(ckpt)
    try:
        state = load_state(ckpt, TRAINER_STATE)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"resume: {e}") from None
    except ValueError as e:
        raise ValueError(f"resume: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ValueError(f"resume: {ckpt / (TRAINER_STATE + '.json')}: the state is not a dict with str keys")
    return state


def remove_stale_tmp(run_dir: Path) -> List[Path]:
    """Delete checkpoints/.tmp-step_* (saves killed half-way; never picked, but never removed either). Only while no
    save can be in flight, i.e. at start-up, and on one rank. Returns what was removed."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    removed = []
    for d in sorted(root.iterdir()):
        if not STALE_TMP.match(d.name):
            continue
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
        else:
            d.unlink(missing_ok=True)
        if not os.path.lexists(d):
            removed.append(d)
            log.warning("removed %s (left by a checkpoint save that did not finish)", d)
        else:
            log.warning("could not remove %s (left by a checkpoint save that did not finish)", d)
    return removed


def resolve_resume(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """null -> None; auto -> newest complete checkpoint in run_dir (or None); a path -> that checkpoint (validated).

    Every start goes through here, so rank 0 also removes the run's stale checkpoints/.tmp-step_* dirs."""
    if env_world()[0] == 0:
        remove_stale_tmp(run_dir)
    if resume is None:
        return None
    if resume == "auto":
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            log.info("resume=auto: no complete checkpoint in %s, starting fresh", checkpoint_root(run_dir))
        else:
            refuse_legacy_pickle(ckpt)
        return ckpt
    path = Path(resume)
    if not (path / "COMPLETE").is_file():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no COMPLETE marker)")
    refuse_legacy_pickle(path)
    return path
