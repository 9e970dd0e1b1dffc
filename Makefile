# Two entry points for a fresh clone: `make demo` (the main job, end to end) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.terraseg-installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench,onnx,stac]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/terraseg demo --out demo

test: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check engine archs launch tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf demo runs .pytest_cache
