# Two commands a newcomer needs: `make demo` (the main job end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench kafka-up kafka-down lint clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || \
	  { echo "Python 3.11+ not found as '$(PYTHON)': install it or run make PYTHON=/path/to/python3.11"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "could not create the virtual environment $(VENV)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]' || { echo "pip install of mindstream[train,dev] failed (see above)"; exit 1; }
	@touch $(STAMP)

test: $(STAMP)
	bash deploy/kafka/kafka.sh fetch
	$(PY) -m pytest

demo: $(STAMP)
	bash deploy/kafka/kafka.sh fetch
	$(PY) -m streams.demo

bench: $(STAMP)
	bash deploy/kafka/kafka.sh fetch
	$(PY) tests/benchmarks/run_all.py

kafka-up:
	bash deploy/kafka/kafka.sh start

kafka-down:
	bash deploy/kafka/kafka.sh stop

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build *.egg-info .pytest_cache
