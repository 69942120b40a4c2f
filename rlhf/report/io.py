"""Atomic writes (a temp file or directory next to the target, then a rename: readers never see half of one) and
readers of text/JSONL files that fail in one line naming the file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, List, Tuple


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_dir(target: str | Path, write: Callable[[Path], None], keep_existing: bool = False) -> Path:
    """Calls write(tmp_dir) on a fresh temp dir next to ``target``, then swaps it in with os.replace.

    A reader sees either the old directory or the complete new one, never a partial save. keep_existing: when the
    target appeared meanwhile (a concurrent writer of the same content won), keep it and drop this write.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if keep_existing and target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return target
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file; a missing, unreadable or undecodable file fails with one line naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist" if p.exists() is False else f"{what}: {p} is not a file")
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what}: {p} is not UTF-8 text (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise ValueError(f"{what}: {p} cannot be read ({e.strerror})") from None


def read_jsonl_numbered(path: str | Path, what: str = "file", allow_empty: bool = False) -> List[Tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; a malformed line fails with the file and its
    line number, an empty file (no rows) fails unless allow_empty. `what` names the config key or role in messages
    (e.g. "judge.demo_path")."""
    rows = []
    for i, line in enumerate(read_text_file(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what}: {path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{what}: {path} line {i}: expected a JSON object, got {type(row).__name__}")
        rows.append((i, row))
    if not rows and not allow_empty:
        raise ValueError(f"{what}: {path} has no rows (empty file)")
    return rows


def read_jsonl(path: str | Path, what: str = "file", allow_empty: bool = False) -> list[dict]:
    """The objects of a JSONL file (read_jsonl_numbered without the line numbers)."""
    return [row for _, row in read_jsonl_numbered(path, what, allow_empty)]
