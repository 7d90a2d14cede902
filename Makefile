# tfrec: every target sets up what it needs, starting from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS ?= models
PORT ?= 8500
REST_PORT ?= 8501

.PHONY: install serve demo-model test lint format bench bench-smoke soak generate clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo ranking model, converted: serving_default plus its structured twin
# serving_default_structured (user features once, items N times).
$(MODELS)/demo/1/saved_model.pb: | $(STAMP)
	rm -rf $(MODELS)/.demo-original $(MODELS)/demo
	$(PY) -m tfrec_tools.demo_model $(MODELS)/.demo-original
	$(VENV)/bin/tfrec-convert $(MODELS)/.demo-original/1 $(MODELS)/demo/1 \
		--user-inputs user_id,user_dense

demo-model: $(MODELS)/demo/1/saved_model.pb

serve: $(STAMP) demo-model
	$(VENV)/bin/tfrec_model_server --port=$(PORT) --model_name=demo \
		--model_base_path=$(abspath $(MODELS))/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/stages.py
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/lanes.py
	$(PY) benchmarks/scheduler.py
	$(PY) benchmarks/overload.py

# The bench pipeline at tiny scale in under a minute, on three models that cover the zoo's
# input kinds (string lookups, a behaviour sequence, two outputs); outputs stay out of benchmarks/.
BENCH_SMOKE_OUT ?= $(or $(TMPDIR),/tmp)/tfrec-bench-smoke
bench-smoke: $(STAMP)
	$(PY) benchmarks/bench.py --scale tiny --models wdl,din,mmoe --n 50 100 --rounds 2 \
		--seconds-per-case 0.3 --out $(BENCH_SMOKE_OUT) --no-readme

# Soak and fault benchmark (issue 16, not in CI): a real server under mixed traffic, hot swaps,
# config reloads and abandoned bursts for SOAK_MINUTES; exits non-zero on an unexpected failure.
SOAK_MINUTES ?= 30
soak: $(STAMP)
	$(PY) benchmarks/soak.py --minutes $(SOAK_MINUTES)

# Protos TF-Serving's pip package lacks (tfrec/protos/*.proto); the generated code is committed.
generate: $(STAMP)
	$(PY) -m grpc_tools.protoc -I. --python_out=. tfrec/protos/*.proto

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache .ruff_cache .mypy_cache
