"""Vet torch.save files (DeepSpeed's checkpoint files) by their opcodes before anything loads them.

The load itself is restricted too (rlhf.backend.zero.restricted_checkpoint_loads: torch's weights-only unpickler);
this scan refuses a bad file earlier, naming what it references.

A pickle runs code only through the objects it names: GLOBAL / INST / STACK_GLOBAL look up a module attribute (a
class or function) that REDUCE / NEWOBJ / BUILD then call; EXT1/2/4 fetch one from copyreg's extension registry.
`pickle_globals` lists those references by reading the opcode stream with pickletools.genops, which decodes and
never executes anything; `check_torch_file` refuses a file that references anything outside an allow-list.

STACK_GLOBAL takes its module and name from the stack. They are resolved only when the two values on top of the stack
were pushed by string opcodes or by memo gets of memo slots that were filled from such strings (the pickler memoizes
every string, so a module name used twice comes back through the memo), with nothing in between but memo puts and
FRAME; in any other case the target is unknown and the pickle is refused.

A torch.save file is a zip archive whose `<archive>/data.pkl` member is the pickle (tensor data are separate raw
members, referred to through persistent ids). Every `.pkl` member is scanned; a file that is not such an archive
(torch's legacy tar / raw-pickle formats), a zip with two members of the same name (case-insensitively: torch's zip
reader may pick another copy than Python's zipfile) or one without data.pkl is refused.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from pathlib import Path
from typing import FrozenSet, Iterable, List, Optional, Set, Tuple

Global = Tuple[str, str]

# What torch.save writes for tensors and state dicts, and what DeepSpeed 0.19.8 adds to its checkpoint files: found by
# scanning real ZeRO-2 and ZeRO-3 checkpoints (float32 and bfloat16, with and without CPU offload; 1 and 2 ranks) of
# this project. Storage types and dtypes are listed for every dtype a run can use (fp16's DynamicLossScaler keeps a
# torch.float16). Every entry builds data: none reaches the file system, the interpreter or the network. torch's own
# find_class turns any name containing "Storage" into a storage type; only torch.<X>Storage is accepted here.
TORCH_GLOBALS: FrozenSet[Global] = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._tensor", "_rebuild_from_type_v2"),  # ZeRO-3 partitions (func, type, args, state: all vetted here too)
    ("torch", "Tensor"),
    ("torch", "Size"),
    *(("torch", f"{t}Storage") for t in ("Float", "BFloat16", "Half", "Double", "Long", "Int", "Short", "Char",
                                           "Byte", "Bool")),
    ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16"),
})
DEEPSPEED_GLOBALS: FrozenSet[Global] = frozenset({
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),         # plain attribute holders (NEWOBJ + BUILD)
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),  # fp16 (GPU) runs
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),           # an IntEnum
    ("deepspeed.utils.tensor_fragment", "fragment_address"),      # a dataclass (numel, start), ZeRO-1/2
})
ALLOWED_GLOBALS: FrozenSet[Global] = TORCH_GLOBALS | DEEPSPEED_GLOBALS

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_UNKNOWN = object()


class UnsafePickleError(ValueError):
    """A pickle (or torch file) references something outside the allow-list, or cannot be vetted."""


def pickle_globals(data: bytes, where: str = "pickle") -> List[Global]:
    """Every (module, name) the pickle in `data` would look up, in order, without executing it.

    Raises UnsafePickleError for a reference that cannot be determined (STACK_GLOBAL from computed values, EXT*
    extension codes) and for a malformed stream."""
    found: List[Global] = []
    memo: dict = {}
    tail: list = []  # what the opcodes since the last "other" opcode pushed: strings, or _UNKNOWN (memo gets)
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _STRING_OPS:
                tail.append(arg if isinstance(arg, str) else _UNKNOWN)
            elif name in _MEMO_GET_OPS:
                tail.append(memo.get(arg, _UNKNOWN))
            elif name in _MEMO_PUT_OPS:
                idx = len(memo) if name == "MEMOIZE" else arg
                memo[idx] = tail[-1] if tail else _UNKNOWN  # the value on top of the stack, if we know it
            elif name == "FRAME":
                pass
            else:
                if name in ("GLOBAL", "INST"):
                    module, _, attr = str(arg).partition(" ")
                    found.append((module, attr))
                elif name == "STACK_GLOBAL":
                    if len(tail) < 2 or not all(isinstance(v, str) for v in tail[-2:]):
                        raise UnsafePickleError(f"{where}: STACK_GLOBAL at byte {pos} takes its target from values "
                                                "that are not plain strings; cannot tell what it would import")
                    found.append((tail[-2], tail[-1]))
                elif name in ("EXT1", "EXT2", "EXT4"):
                    raise UnsafePickleError(f"{where}: {name} at byte {pos} refers to copyreg extension code {arg}; "
                                            "cannot tell what it would import")
                tail = []
    except UnsafePickleError:
        raise
    except Exception as e:  # ValueError from genops on a truncated / malformed stream, and anything odd in it
        raise UnsafePickleError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None
    return found


def _check(refs: Iterable[Global], allowed: FrozenSet[Global], where: str) -> None:
    bad = sorted({r for r in refs if r not in allowed})
    if bad:
        shown = ", ".join(f"{m}.{n}" for m, n in bad[:5])
        raise UnsafePickleError(f"{where}: refers to {shown}{' ...' if len(bad) > 5 else ''}, which is not on the "
                                "allow-list of what torch / DeepSpeed checkpoints contain; not loading it (a pickle "
                                "can run code)")


def check_pickle(data: bytes, allowed: FrozenSet[Global] = ALLOWED_GLOBALS, where: str = "pickle") -> List[Global]:
    """The pickle's references if all of them are allowed; UnsafePickleError otherwise."""
    refs = pickle_globals(data, where)
    _check(refs, allowed, where)
    return refs


def torch_file_globals(path: Path) -> Set[Global]:
    """Every (module, name) referenced by the pickles of a torch.save zip archive (nothing is executed)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise UnsafePickleError(f"{path}: not a torch zip archive (torch's legacy formats are not vetted)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            lowered = [n.lower() for n in names]
            if len(set(lowered)) != len(lowered):
                raise UnsafePickleError(f"{path}: the zip archive has duplicate member names")
            pickles = [n for n in names if n.lower().endswith(".pkl")]
            if not any(n.lower().endswith("/data.pkl") or n.lower() == "data.pkl" for n in pickles):
                raise UnsafePickleError(f"{path}: no data.pkl in the zip archive; not a torch.save file")
            refs: Set[Global] = set()
            for n in pickles:
                refs.update(pickle_globals(zf.read(n), f"{path}:{n}"))
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as e:
        raise UnsafePickleError(f"{path}: unreadable zip archive ({e})") from None
    return refs


def check_torch_file(path: Path, allowed: FrozenSet[Global] = ALLOWED_GLOBALS) -> Set[Global]:
    """UnsafePickleError unless every global the torch.save file at `path` references is allowed; returns them."""
    refs = torch_file_globals(path)
    _check(refs, allowed, str(path))
    return refs


def check_torch_dir(directory: Path, allowed: FrozenSet[Global] = ALLOWED_GLOBALS,
                    suffixes: Tuple[str, ...] = (".pt", ".pth", ".bin", ".pkl")) -> List[Path]:
    """check_torch_file on every file under `directory` (recursively) with one of `suffixes`; symlinks and anything
    that is neither a plain file nor a directory are refused. Returns the files checked."""
    directory = Path(directory)
    checked: List[Path] = []
    for p in sorted(directory.rglob("*")):
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            raise UnsafePickleError(f"{p}: not a plain file or directory")
        if p.is_file() and p.suffix.lower() in suffixes:
            check_torch_file(p, allowed)
            checked.append(p)
    return checked


def compat_remapped(allowed: Optional[FrozenSet[Global]] = None) -> List[Global]:
    """Allow-list entries that Python's unpickler would remap for protocol < 3 pickles (fix_imports): must be none,
    or an allowed name could stand for another object. torch.save writes protocol 2."""
    allowed = ALLOWED_GLOBALS if allowed is None else allowed
    return sorted(g for g in allowed if g in _compat_pickle.NAME_MAPPING or g[0] in _compat_pickle.IMPORT_MAPPING)
