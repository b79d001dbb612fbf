# Two commands set up and run everything on a fresh machine (Python 3.10+ on PATH as python3):
#   make demo   create .venv if missing, install mmdiff, train the default model (digits) and sample from it
#   make test   create .venv if missing, install mmdiff with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m mmdiff hydra.run.dir=outputs/demo
	$(BIN)/python -m mmdiff mode=sample checkpoint=outputs/demo/last.safetensors n=100 out=outputs/demo/generated
	@echo "samples: outputs/demo/samples/ (grids during training) and outputs/demo/generated/grid.png"

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf outputs multirun samples .pytest_cache
