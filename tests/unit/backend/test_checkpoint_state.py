"""Resume state without pickle: the JSON + safetensors state files, the refusal of old (pickled) trainer_state.pt,
the pickle scanner that vets DeepSpeed's own files before DeepSpeed unpickles them, and the removal of stale
checkpoints/.tmp-step_* dirs at start-up."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TRAPS, SystemTrap, legacy_message, trapped_checkpoint

from rlhf.backend.checkpoint import (
    load_state,
    load_trainer_state,
    remove_stale_tmp,
    resolve_resume,
    rng_state,
    save_state,
    set_rng_state,
)
from rlhf.backend.safe_pickle import (
    ALLOWED_GLOBALS,
    UnsafePickleError,
    check_pickle,
    check_torch_dir,
    check_torch_file,
    compat_remapped,
    pickle_globals,
)


def assert_identical(a, b, path="state"):
    """Equal values of the same types all the way down (tuples stay tuples, int keys stay ints, tensors keep dtype)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        assert all(type(k) is type(kb) for k, kb in zip(a, b)), f"{path}: key types"
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b)), path


def round_trip(tmp_path, obj, stem="state"):
    save_state(tmp_path, stem, obj)
    assert {p.name for p in tmp_path.iterdir()} >= {f"{stem}.json", f"{stem}.safetensors"}
    return load_state(tmp_path, stem)


def trained_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW([{"params": list(model[0].parameters()), "lr": 1e-2, "name": "actor"},
                             {"params": list(model[2].parameters()), "lr": 3e-3, "name": "critic"}],
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
    return model, opt, sched


def train(model, opt, sched, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(8, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        sched.step()


def test_adamw_and_lambdalr_state_round_trips_exactly(tmp_path):
    model, opt, sched = trained_optimizer()
    train(model, opt, sched, 3, seed=1)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    back = round_trip(tmp_path, state)
    assert_identical(state, back)
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert sorted(back["optimizer"]["state"]) == [0, 1, 2, 3]  # int param ids, not "0"
    assert back["optimizer"]["state"][0]["step"].dim() == 0
    assert back["scheduler"]["lr_lambdas"] == [None, None]  # plain functions are not saved

    # a fresh optimizer + scheduler loaded from it continues exactly like the original
    model2, opt2, sched2 = trained_optimizer(seed=5)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    train(model, opt, sched, 2, seed=2)
    train(model2, opt2, sched2, 2, seed=2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_state_round_trips_and_replays_the_same_draws(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(2)
    state = rng_state()
    back = round_trip(tmp_path, state)
    assert_identical(state, back)
    assert isinstance(back["python"], tuple) and isinstance(back["python"][1], tuple)
    assert isinstance(back["numpy"], tuple) and back["numpy"][1].dtype == np.uint32
    assert back["torch"].dtype == torch.uint8
    draws = lambda: (random.random(), random.getrandbits(64), np.random.rand(3).tolist(),  # noqa: E731
                     np.random.randint(0, 1000, 4).tolist(), torch.rand(3), torch.randint(0, 1000, (4,)))
    first = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(back)
    second = draws()
    assert first[:4] == second[:4]
    assert torch.equal(first[4], second[4]) and torch.equal(first[5], second[5])


def test_nested_values_and_edge_cases_round_trip(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    evals = {"before": {"n": 8, "em_strict": 0.125, "em_flexible": 0.25, "mean_response_tokens": 11.5, "step": 0,
                        "examples": [{"question": "2+2? \u00e9\u4e2d \"q\" \\ {$tensor}", "response": "4",
                                      "answer": "4", "correct": True, "tokens": [1, 2, 3]}] * 3}}
    state = {
        "evals": evals,
        "bad_steps": 0, "step": 4, "kl_ctl": {"value": 0.0513}, "sampler": {"epoch": 1, "pos": 3},
        "floats": [math.inf, -math.inf, math.nan, -0.0, 1e-310, 2.0, 0.1 + 0.2],
        "keys": {1: "int", 2.5: "float", False: "bool", None: "none", "s": "str", math.inf: "inf"},
        "dollar": {"$tensor": "not a marker", "$dict": [1]},
        "nested": ((1, (2, [3, (4,)])), [], (), {}, [[[]]]),
        "tensors": {
            "scalar": torch.tensor(7.0), "int0": torch.tensor(3, dtype=torch.int64),
            "bool": torch.tensor([True, False]),
            "bf16": torch.randn(3).bfloat16(), "half": torch.randn(2).half(), "u8": torch.arange(5, dtype=torch.uint8),
            "f64": torch.randn(2, dtype=torch.float64), "empty": torch.empty(0, 3),
            "view": base[:, 1], "view_again": base[1:], "same_object_twice": [base, base],  # shared storage
        },
        "arrays": [np.arange(4, dtype=np.uint32), np.zeros((2, 0), dtype=np.float64), np.array(5, dtype=np.int16)],
    }
    back = round_trip(tmp_path, state)
    assert_identical(state, back)
    assert back["tensors"]["view"].is_contiguous()
    back["tensors"]["same_object_twice"][0].add_(1)  # loaded tensors do not alias each other
    assert torch.equal(back["tensors"]["same_object_twice"][1], base)


@pytest.mark.parametrize("obj,path", [
    ({"a": [1, {"b": object()}]}, "state['a'][1]['b']"),
    ({"s": {1, 2}}, "state['s']"),
    ({"opt": {"state": {0: {"x": np.int64(3)}}}}, "state['opt']['state'][0]['x']"),
    ({"k": {(1, 2): 3}}, "state['k']"),
    ({"arr": [np.array(["a"])]}, "state['arr'][0]"),
    ({"sparse": torch.eye(2).to_sparse()}, "state['sparse']"),
    ({"bytes": b"x"}, "state['bytes']"),
])
def test_unsupported_types_raise_type_error_naming_the_path(tmp_path, obj, path):
    with pytest.raises(TypeError) as err:
        save_state(tmp_path, "state", obj)
    assert path in str(err.value)


# ------------------------------------------------------------------------------------- crafted state files
def _valid_state(tmp_path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_state(ckpt, "trainer_state", {"step": 2, "t": torch.ones(2), "rng": (1, (2, 3))})
    return ckpt


def _edit_json(ckpt: Path, fn) -> None:
    p = ckpt / "trainer_state.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["state"].update(evil={"$eval": "__import__('os').system('x')"}), "unknown marker '\\$eval'"),
    (lambda d: d["state"].update(evil={"$pickle": "gASV"}), "unknown marker '\\$pickle'"),
    (lambda d: d["state"].update(t={"$tensor": "t9", "dtype": "float32", "shape": [2]}), "not in the safetensors"),
    (lambda d: d["state"].update(t={"$tensor": "t0", "dtype": "int64", "shape": [2]}), "float32"),
    (lambda d: d["state"].update(t={"$tensor": "t0", "dtype": "float32", "shape": [2], "x": 1}), "takes exactly"),
    (lambda d: d["state"].update(t={"$tensor": "t0", "dtype": "float32", "shape": [2]}, u=d["state"]["t"]),
     "referred to twice"),
    (lambda d: d["state"].update(t=1), "does not refer to"),
    (lambda d: d["state"].update(rng={"$tuple": {"a": 1}}), "\\$tuple needs a list"),
    (lambda d: d["state"].update(x={"$tuple": [], "$float": "inf"}), "more than one marker"),
    (lambda d: d["state"].update(x={"$float": "1e400"}), "\\$float must be one of"),
    (lambda d: d["state"].update(x={"$dict": [[[1], 2]]}), "a dict key must be"),
    (lambda d: d["state"].update(x={"$dict": [[1, 2], [1, 3]]}), "duplicate key"),
    (lambda d: d["state"].update(x={"$dict": [[1, 2, 3]]}), "\\$dict needs a list of"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(format="torch"), "not a valid state file"),
    (lambda d: d.pop("state"), "not a valid state file"),
])
def test_crafted_or_malformed_state_json_is_refused_naming_the_file(tmp_path, edit, match):
    ckpt = _valid_state(tmp_path)
    assert load_trainer_state(ckpt)["step"] == 2
    _edit_json(ckpt, edit)
    with pytest.raises(ValueError, match=match) as err:
        load_trainer_state(ckpt)
    assert str(err.value).startswith(f"resume: {ckpt / 'trainer_state.json'}: ")


@pytest.mark.parametrize("text,match", [
    ('{"format": "rlhf.state", "version": 1, "state": NaN}', "NaN"),
    ('{"format": "rlhf.state", "version": 1, "state": {"a": 1, "a": 2}}', "duplicate key"),
    ('[1, 2]', "not a valid state file"),
    ('{"format": "rlhf.state", "version": 1, "state": ' + "[" * 100000 + "]" * 100000 + "}", "not a valid state"),
    ("\x80\x04K\x01.", "not a valid state file"),
])
def test_malformed_json_text_is_refused(tmp_path, text, match):
    ckpt = _valid_state(tmp_path)
    (ckpt / "trainer_state.json").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=match):
        load_trainer_state(ckpt)


def test_missing_or_corrupt_tensor_file_is_refused(tmp_path):
    ckpt = _valid_state(tmp_path)
    (ckpt / "trainer_state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_trainer_state(ckpt)
    (ckpt / "trainer_state.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="^resume: .*trainer_state.safetensors does not exist"):
        load_trainer_state(ckpt)


# ----------------------------------------------------------------------------------- booby-trapped pickles
# TRAPS, trapped_checkpoint, legacy_message: tests/helpers.py (shared with the CLI check in tests/e2e/test_resume.py)


@pytest.mark.parametrize("trap", list(TRAPS))
def test_old_pickled_trainer_state_is_refused_without_unpickling(tmp_path, trap):
    ckpt, marker = trapped_checkpoint(tmp_path, trap)
    for load in (load_trainer_state, lambda c: resolve_resume(str(c), tmp_path / "new_run")):
        with pytest.raises(FileNotFoundError) as err:
            load(ckpt)
        assert str(err.value).startswith(legacy_message(ckpt)) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="is a pickle"):
        resolve_resume("auto", tmp_path / "old_run")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- pickle scanner
def test_benign_torch_file_passes_the_scanner(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"a": torch.randn(3), "b": OrderedDict(w=torch.zeros(2, 2, dtype=torch.bfloat16)), "n": 3,
                "s": torch.Size([2, 3])}, path)
    refs = check_torch_file(path)
    assert ("torch._utils", "_rebuild_tensor_v2") in refs and refs <= ALLOWED_GLOBALS
    assert check_torch_dir(tmp_path) == [path]


@pytest.mark.parametrize("trap", list(TRAPS))
@pytest.mark.parametrize("protocol", [2, 4])
def test_torch_file_with_code_is_refused_and_never_runs(tmp_path, trap, protocol):
    marker = tmp_path / "MARKER"
    path = tmp_path / "ckpt" / "zero" / "mp_rank_00_model_states.pt"
    path.parent.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "x": TRAPS[trap](marker)}, path, pickle_protocol=protocol)
    with pytest.raises(UnsafePickleError, match="not on the allow-list") as err:
        check_torch_file(path)
    assert ("posix.system" if trap == "os.system" else ".open") in str(err.value)
    with pytest.raises(UnsafePickleError):
        check_torch_dir(tmp_path / "ckpt")
    assert not marker.exists()


def test_stack_global_names_are_read_through_the_memo():
    # protocol 4: "collections" is pushed once, memoized, and fetched again for the second class
    data = pickle.dumps([OrderedDict, __import__("collections").Counter, OrderedDict()], protocol=4)
    assert b"\x94" in data and pickle_globals(data) == [("collections", "OrderedDict"), ("collections", "Counter")]
    with pytest.raises(UnsafePickleError, match="collections.Counter"):
        check_pickle(data)


def _op(name: str, arg: bytes = b"") -> bytes:
    return getattr(pickle, name) + arg


def _short_str(s: str) -> bytes:
    return _op("SHORT_BINUNICODE", bytes([len(s)]) + s.encode())


@pytest.mark.parametrize("data,match", [
    # module from the memo slot of an int, not a string
    (_op("PROTO", b"\x04") + _op("BININT1", b"\x05") + _op("MEMOIZE") + _op("POP") + _op("BINGET", b"\x00")
     + _short_str("system") + _op("STACK_GLOBAL") + _op("STOP"), "STACK_GLOBAL"),
    # a memo slot that was never filled
    (_op("PROTO", b"\x04") + _op("BINGET", b"\x07") + _short_str("system") + _op("STACK_GLOBAL") + _op("STOP"),
     "STACK_GLOBAL"),
    # strings separated by another opcode (stack shape unknown to the scanner)
    (_op("PROTO", b"\x04") + _short_str("posix") + _op("EMPTY_LIST") + _op("POP") + _short_str("system")
     + _op("STACK_GLOBAL") + _op("STOP"), "STACK_GLOBAL"),
    # copyreg extension codes
    (_op("PROTO", b"\x02") + _op("EXT1", b"\x01") + _op("STOP"), "EXT1"),
    # protocol 0 INST names its class like GLOBAL
    (b"(S'touch x'\nios\nsystem\n.", "os.system"),
    (b"cposix\nsystem\n(S'touch x'\ntR.", "posix.system"),
    (b"\x80\x02cposix\nsys", "not a readable pickle"),
])
def test_scanner_refuses_what_it_cannot_vet(data, match):
    with pytest.raises(UnsafePickleError, match=match):
        check_pickle(data)


def test_memoized_string_pair_resolves(tmp_path):
    data = (_op("PROTO", b"\x04") + _short_str("posix") + _op("MEMOIZE") + _short_str("system") + _op("MEMOIZE")
            + _op("BINGET", b"\x00") + _op("BINGET", b"\x01") + _op("STACK_GLOBAL") + _op("STOP"))
    assert pickle_globals(data) == [("posix", "system")]


def test_non_zip_duplicate_members_and_missing_data_pkl_are_refused(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafePickleError, match="not a torch zip archive"):
        check_torch_file(legacy)
    ok = tmp_path / "ok.pt"
    torch.save({"a": torch.ones(1)}, ok)
    dup = tmp_path / "dup.pt"
    with zipfile.ZipFile(ok) as src, zipfile.ZipFile(dup, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("ok/DATA.PKL", pickle.dumps(SystemTrap(tmp_path / "M"), protocol=2))
    with pytest.raises(UnsafePickleError, match="duplicate member names"):
        check_torch_file(dup)
    nodata = tmp_path / "nodata.pt"
    with zipfile.ZipFile(nodata, "w") as z:
        z.writestr("x/version", "3\n")
    with pytest.raises(UnsafePickleError, match="no data.pkl"):
        check_torch_file(nodata)


def test_allow_list_is_not_remapped_by_pickles_fix_imports():
    assert compat_remapped() == []


# ------------------------------------------------------------------------------------ stale temp dirs
def test_stale_tmp_dirs_are_removed_at_start_and_resume(tmp_path, caplog, monkeypatch):
    root = tmp_path / "checkpoints"
    (root / "step_000002").mkdir(parents=True)
    (root / "step_000002" / "COMPLETE").write_text("2\n")
    stale = [root / ".tmp-step_000003-k2j4x", root / ".tmp-step_000004-ds", root / ".tmp-step_000005-file"]
    (stale[0] / "model").mkdir(parents=True)
    (stale[0] / "model" / "model.safetensors").write_bytes(b"half")
    stale[1].mkdir()
    stale[2].write_text("x")
    keep = [root / ".tmp-other", root / "step_000002", root / "notes.txt"]
    keep[0].mkdir()
    keep[2].write_text("mine")

    monkeypatch.setenv("RANK", "1")  # another rank of a DeepSpeed run: never deletes
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_resume("auto", tmp_path) == root / "step_000002"
    assert all(p.exists() for p in stale)

    monkeypatch.setenv("RANK", "0")
    with caplog.at_level("WARNING", logger="rlhf"):
        assert resolve_resume(None, tmp_path) is None  # a fresh start cleans up too
    assert not any(os.path.lexists(p) for p in stale) and all(p.exists() for p in keep)
    assert all(str(p) in caplog.text for p in stale)
    (root / ".tmp-step_000006-x").mkdir()
    assert resolve_resume("auto", tmp_path) == root / "step_000002" and not (root / ".tmp-step_000006-x").exists()
    assert remove_stale_tmp(tmp_path / "nowhere") == []


def test_state_files_are_written_without_pickle(tmp_path):
    save_state(tmp_path, "s", {"t": torch.ones(2), "r": rng_state()})
    st = (tmp_path / "s.safetensors").read_bytes()
    assert b"\x80\x02" not in (tmp_path / "s.json").read_bytes()
    header_len = int.from_bytes(st[:8], "little")
    assert json.loads(st[8:8 + header_len])["__metadata__"] == {"format": "rlhf.state"}
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("trap", list(TRAPS))
def test_the_traps_are_live(tmp_path, trap):
    """Control: unpickling the trap does create the marker (so the tests above would notice a load)."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(TRAPS[trap](marker), protocol=2))
    assert marker.exists()


class _TorchCheckpointEngine:
    """What DeepSpeed's TorchCheckpointEngine.load does: a full unpickle."""

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


class _StubEngine:
    """DeepSpeed's engine as far as load_checkpoint goes: every .pt under the dir through checkpoint_engine.load."""

    def __init__(self):
        self.calls = []
        self.checkpoint_engine = _TorchCheckpointEngine()

    def load_checkpoint(self, path, **kw):
        self.calls.append(path)
        for f in sorted(Path(path).rglob("*.pt")):
            self.checkpoint_engine.load(str(f), map_location="cpu")
        for f in sorted(Path(path).rglob("*.direct")):  # DeepSpeed's universal / ZeRO-3 paths skip the engine
            torch.load(str(f), weights_only=False)
        return path, None


def _ds_checkpoint(tmp_path, payload, tag: str = "zero") -> Path:
    ckpt = tmp_path / "checkpoints" / "step_000001"
    (ckpt / "deepspeed" / "zero").mkdir(parents=True)
    torch.save(payload, ckpt / "deepspeed" / "zero" / "mp_rank_00_model_states.pt")
    save_state(ckpt, "trainer_state", {"step": 1, "optimizer": None, "scheduler": {}, "rng": rng_state(),
                                       "deepspeed": {"zero_stage": 2, "world_size": 1, "tag": tag}})
    save_state(ckpt, "rng_rank0", {"torch": torch.arange(3, dtype=torch.uint8)})
    (ckpt / "COMPLETE").write_text("1\n")
    return ckpt


def test_deepspeed_resume_scans_before_deepspeed_unpickles(tmp_path):
    """DeepSpeedBackend.load on a stub backend: a trapped deepspeed/ file never reaches DeepSpeed's engine."""
    from types import SimpleNamespace

    from rlhf.backend.zero import DeepSpeedBackend

    runtime = SimpleNamespace(stage=2, dist=SimpleNamespace(world_size=1, rank=0), ds_engine=_StubEngine(),
                              scheduler=SimpleNamespace(load_state_dict=lambda state: None))
    good = _ds_checkpoint(tmp_path / "good", {"module": OrderedDict(w=torch.ones(2))})
    state = DeepSpeedBackend.load(runtime, good)
    assert runtime.ds_engine.calls == [str(good / "deepspeed")] and state["step"] == 1
    assert torch.equal(state["rng"]["torch"], torch.arange(3, dtype=torch.uint8))  # this rank's RNG file

    marker = tmp_path / "MARKER"
    bad = _ds_checkpoint(tmp_path / "bad", {"module": {}, "x": SystemTrap(marker)})
    with pytest.raises(ValueError, match="^resume: .*mp_rank_00_model_states.pt.*posix.system.*not on the allow-list"):
        DeepSpeedBackend.load(runtime, bad)
    assert runtime.ds_engine.calls == [str(good / "deepspeed")] and not marker.exists()

    # the tag names the directory DeepSpeed reads: one pointing outside deepspeed/ (never scanned) is refused
    outside = _ds_checkpoint(tmp_path / "outside", {"module": {}}, tag="../../../elsewhere")
    with pytest.raises(ValueError, match="unexpected DeepSpeed tag"):
        DeepSpeedBackend.load(runtime, outside)
    assert len(runtime.ds_engine.calls) == 1


def test_deepspeed_files_are_loaded_by_the_restricted_unpickler(tmp_path, monkeypatch):
    """Even past the opcode scan (disabled here), DeepSpeed's own loads run with weights_only=True: a trapped file is
    refused by torch's restricted unpickler and never runs; the engine's own loader is put back afterwards."""
    from types import SimpleNamespace

    import rlhf.backend.zero as zero

    monkeypatch.setattr(zero, "check_torch_dir", lambda path: None)
    runtime = SimpleNamespace(stage=2, dist=SimpleNamespace(world_size=1, rank=0), ds_engine=_StubEngine(),
                              scheduler=SimpleNamespace(load_state_dict=lambda state: None))
    original = runtime.ds_engine.checkpoint_engine.load
    good = _ds_checkpoint(tmp_path / "good", {"module": OrderedDict(w=torch.ones(2))})
    assert zero.DeepSpeedBackend.load(runtime, good)["step"] == 1  # real payloads load
    marker = tmp_path / "MARKER"
    bad = _ds_checkpoint(tmp_path / "bad", {"module": {}, "x": SystemTrap(marker)})
    with pytest.raises(ValueError, match="^resume: .*mp_rank_00_model_states.pt refused by the restricted unpickler"):
        zero.DeepSpeedBackend.load(runtime, bad)
    assert not marker.exists()
    assert runtime.ds_engine.checkpoint_engine.load == original
    # a path that calls torch.load(weights_only=False) itself, not through the checkpoint engine, is restricted too
    direct = _ds_checkpoint(tmp_path / "direct", {"module": OrderedDict(w=torch.ones(2))})
    torch.save({"x": SystemTrap(marker)}, direct / "deepspeed" / "zero" / "optimizer_state.direct")
    torch_load = torch.load
    with pytest.raises(ValueError, match="optimizer_state.direct refused by the restricted unpickler"):
        zero.DeepSpeedBackend.load(runtime, direct)
    assert not marker.exists() and torch.load is torch_load
