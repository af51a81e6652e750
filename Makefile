# One entry point for set-up, running and testing. Every target installs what it needs first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   := var/demo

.PHONY: install run demo docs check fast-tests test test-unit test-service test-perf bench-quick bench-speed bench-scale bench-chaos gpu-check gpu-wheels lint clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

## The main job: the service (API + one worker) on the embedded default; prints the URL and an API key.
run: $(STAMP)
	$(VENV)/bin/saft serve --port $(or $(PORT),8000)

## A SAFT fine-tuning demo with the CLI, on the bundled world: painting, where the bundled model is weak
## zero-shot, with sketch as the shifted set. Prints the frontier (zero-shot at alpha 0, fine-tuned at 1) and the
## recommended alpha, then classifies sketches at alpha 0 and at the recommended alpha.
demo: $(STAMP)
	$(VENV)/bin/saft world render --domain painting --per-class 32 --seed 1 --out $(DEMO)/painting
	$(VENV)/bin/saft world render --domain sketch --per-class 10 --seed 2 --out $(DEMO)/sketch
	$(VENV)/bin/saft finetune --train $(DEMO)/painting --eval sketch=$(DEMO)/sketch \
		--ratio 0.01 --epochs 5 --batch-size 32 --lr 1e-3 --seed 0 --out $(DEMO)/checkpoint.safetensors
	$(VENV)/bin/saft classify --checkpoint $(DEMO)/checkpoint.safetensors --alpha 0 --top-k 2 \
		$(DEMO)/sketch/triangle/sketch_00000.png $(DEMO)/sketch/hexagon/sketch_00000.png
	$(VENV)/bin/saft classify --checkpoint $(DEMO)/checkpoint.safetensors --alpha recommended --top-k 2 \
		$(DEMO)/sketch/triangle/sketch_00000.png $(DEMO)/sketch/hexagon/sketch_00000.png

## docs/configuration.md from the code (Settings, the core's run options, the job spec); a test fails when it drifts.
docs: $(STAMP)
	$(PY) scripts/gen_config_docs.py

## The type checker runs twice: over all the packages ([tool.mypy] in pyproject.toml), and over the client alone
## with its own configuration (clients/python/pyproject.toml), as it is installed without the server.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	cd clients/python && $(abspath $(VENV))/bin/mypy

## The test tree mirrors the code (tests/<tier>): core (saft_core, saft_worlds), worker, cli (saft_cli), client
## (saft_client and the remote commands), service (saft_service against real stores), api (the HTTP app and the
## running stack), console (the browser), benchmarks, gpu. Markers: slow, service (needs Postgres and Redis),
## gpu, perf (a wall-clock bound: only make test-perf runs those).
## The tiers that need no running service (and the service layer's pure modules: logs, metric names, webhook
## signatures); check runs their fast part.
IN_PROCESS := tests/core tests/worker tests/cli tests/client \
	tests/service/test_logs.py tests/service/test_metrics_names.py tests/service/test_webhooks_unit.py

## Fast feedback, under a minute on 2 cores: lint and the in-process tiers' tests that are neither slow, nor
## service, nor perf, side by side (the type checker and the tests each keep one core busy; one after the other
## they take about 20 s longer).
## pytest exits 5 when it selects no test; make stops on that as on a failure (an empty selection is a mistake).
check: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target lint fast-tests

fast-tests: $(STAMP)
	$(VENV)/bin/pytest $(IN_PROCESS) -m "not slow and not service and not perf" -q

## All tests but the wall-clock bounds: lint, every tier (the service tiers need Postgres and Redis; see
## docs/testing.md).
test: $(STAMP) lint
	$(VENV)/bin/pytest -m "not perf"

## The in-process tiers, slow tests included.
test-unit: $(STAMP)
	$(VENV)/bin/pytest $(IN_PROCESS) -m "not service and not perf"

## The tiers that run against real Postgres, Redis and service processes.
test-service: $(STAMP)
	$(VENV)/bin/pytest tests/service tests/api tests/client tests/console -m "not perf"

## The wall-clock bounds (latencies under load, ratios of timings, fail-fast limits), apart from the other tests
## because a busy shared machine can break them without a bug: run them on a quiet one.
test-perf: $(STAMP)
	$(VENV)/bin/pytest -m perf

## The distribution-shift benchmark (--quick: about 4 minutes on 2 cores; full: about an hour, see benchmarks/results).
bench-quick: $(STAMP)
	$(PY) -m benchmarks.shift --quick --out var/bench-quick

## Training-step speed and memory: SAFT's gradient engines vs full fine-tuning, LoRA and the floor
## (ViT-B/16 shape on CPU: tens of minutes; writes benchmarks/results/speed.{json,md}).
bench-speed: $(STAMP)
	$(PY) -m benchmarks.speed

## Data at scale: a 2 GB upload through the client with a cut and a resume, an import by path, the evaluating
## stage against its floor (about 30 minutes on 2 cores; writes benchmarks/results/scale.{json,md}).
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

## The chaos soak: jobs from three tenants through two APIs and two workers on a private Postgres and Redis while
## random faults strike (kill -9, restarts, outages), then checks that every job ended once and every tenant was
## told (about 13 minutes; writes benchmarks/results/chaos.{json,md}). CHAOS_ARGS="--minutes 1" for a short one.
bench-chaos: $(STAMP)
	$(PY) -m benchmarks.chaos $(CHAOS_ARGS)

## The GPU check (on a machine with an NVIDIA GPU; at most 10 minutes, its steps' limits): the speed benchmark on CUDA, one job through
## the service, the gpu tests; results in var/gpu-check. GPU_CHECK_ARGS=--cpu rehearses it on the CPU.
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS) var/gpu-check

## The wheels a GPU machine without network needs for gpu-check (Python 3.12, manylinux x86-64), into .whl/.
gpu-wheels: $(STAMP)
	bash scripts/gpu_wheels.sh

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache clients/python/.mypy_cache

## The console's JavaScript type-checked by TypeScript's tsc (JSDoc types, tsconfig.json; a few seconds), as part
## of lint. Installs Debian's node-typescript where tsc is missing and apt-get can (as .ci/run installs chromium),
## else npm's.
.PHONY: lint-js
lint: lint-js
lint-js:
	bash scripts/check_console_js.sh
