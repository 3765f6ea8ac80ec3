# Two commands a newcomer needs: `make demo` (the main job end to end) and `make test`.
SHELL := /bin/bash
# Prefer an explicit python3.11; any python3 >= 3.11 will do.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
KAFKA := bash deploy/kafka/kafka.sh
# Runs a command with KAFKA_BOOTSTRAP exported: the user's broker, or a fresh one stopped afterwards.
WITH_BROKER := bash deploy/kafka/with-broker.sh
KAFKA_PORT ?= 9092
# Extra pytest arguments, e.g. make test PYTEST_ARGS="-x -k kafka"
PYTEST_ARGS ?=
# Extra run_all.py arguments, e.g. make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
# Extra bench_quality.py arguments, e.g. make bench-quality QUALITY_ARGS="--data ml-100k --epochs 2"
QUALITY_ARGS ?=

.PHONY: demo test test-cluster soak bench bench-quality kafka-up kafka-down kafka-status lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || \
	  { echo "Python 3.11+ not found ('$(PYTHON)' is not on PATH): install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "Python 3.11+ not found: '$(PYTHON)' is $$($(PYTHON) -V 2>&1); install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { echo "could not create the virtual environment $(VENV) with $(PYTHON) (Debian/Ubuntu: apt install python3.11-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]' || { echo "pip install of mindstream[train,dev] failed (see above)"; exit 1; }
	@touch $(STAMP)

# The pytest session starts its own broker on free ports (or uses KAFKA_BOOTSTRAP); `fetch` first so a
# missing Java or Maven fails here with one clear line.
test: $(STAMP)
	@$(KAFKA) fetch
	$(PY) -m pytest $(PYTEST_ARGS)

# Every scenario on a 3-broker cluster (kafka.sh cluster, replication 3, min.insync.replicas 2): broker
# leader killed, broker killed and restarted, rolling restart; and workers added, stopped, killed (~15 min).
# `make test` runs the first only.
test-cluster: $(STAMP)
	@$(KAFKA) fetch
	MINDSTREAM_CLUSTER=1 $(PY) -m pytest tests/test_cluster_failover.py tests/test_cluster_workers.py -s $(PYTEST_ARGS)

# The soak run: 200k events through a worker killed -9 three times, every user checked (~15-25 min).
soak: $(STAMP)
	@$(KAFKA) fetch
	MINDSTREAM_SOAK=1 $(PY) -m pytest tests/test_reliability_crash.py -m soak -s $(PYTEST_ARGS)

# The whole mission against a broker of its own (or KAFKA_BOOTSTRAP): data, training, export, Milvus, worker.
demo: $(STAMP)
	@$(KAFKA) fetch
	$(WITH_BROKER) $(PY) -m streams.demo

# Regenerates BENCHMARKS.md and docs/benchmarks/*.png (15-25 min); make bench BENCH_ARGS=--quick for ~6 min.
bench: $(STAMP)
	@$(KAFKA) fetch
	@$(PY) -c 'import torch_rechub' 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(WITH_BROKER) $(PY) tests/benchmarks/run_all.py $(BENCH_ARGS)

# The multi-interest quality evidence (issue 11): ml-100k and ml-1m x user-split seeds 0,1,2; MIND, MIND-1,
# YouTube-DNN, most-popular with one epoch budget and early stopping on validation users; interest diagnostics
# and the served diversity sweep. Rewrites BENCHMARKS.md's quality evidence section and its plots. At the default
# 10 epochs roughly an hour on the 2-core machine (ml-1m dominates); runs already done are reused. E.g.
# make bench-quality QUALITY_ARGS="--data ml-100k --seeds 0 --epochs 1" (a minute) or --train-args "...".
bench-quality: $(STAMP)
	$(PY) tests/benchmarks/bench_quality.py --evidence $(QUALITY_ARGS)

# A long-running local broker on localhost:$(KAFKA_PORT) (state in deploy/kafka/.state), for working by hand.
kafka-up:
	@$(KAFKA) fetch
	@$(KAFKA) start --port $(KAFKA_PORT)

kafka-down:
	@$(KAFKA) stop

kafka-status:
	@$(KAFKA) status || true

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info .pytest_cache
