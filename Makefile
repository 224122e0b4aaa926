# tensorcompress — every target is self-sufficient on a fresh machine: it creates .venv and installs what it
# needs (idempotently; a no-op when pyproject.toml has not changed since the last install).
#
#   make test   ruff, the unit tests, then the notebooks under nbval
#   make tour   execute every notebook in level order, render HTML to build/html/, print a timing table
#   make lab    JupyterLab on notebooks/ (as root too, and without a display)
#
# Torch: CPU machines get the CPU wheel; set TORCH_SPEC / TORCH_INDEX to choose another build (see README).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
NBVAL_FLAGS ?= --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# Plots: headless Agg for the unit tests; notebook kernels get matplotlib's inline back-end (Agg there would drop
# every figure from the stored outputs and the HTML), whatever MPLBACKEND the calling shell has.
INLINE := MPLBACKEND=module://matplotlib_inline.backend_inline
export TQDM_DISABLE := 1
export PYTHONHASHSEED := 0

.PHONY: install test unit notebooks-test lint tour lab notebooks bench clean student

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# Torch first, so that the range in pyproject.toml is already met and pip never pulls a CUDA build by
	@# accident. In this order: a torch already in $(VENV) is kept (e.g. a CUDA build a GPU user put there); else a
	@# wheel already on this machine (pip's find-links), its own dependencies then from the package index; else the
	@# CPU index (or, where nvidia-smi exists, PyPI's default build).
	@$(BIN)/python -c "import torch" 2>/dev/null || \
	  { $(BIN)/python -m pip install -q --no-index --no-deps "$(TORCH_SPEC)" 2>/dev/null && \
	    $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; } || \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest tests/

# No notebook to test is an error said in words, not pytest's bare exit status 5 ("no tests collected").
notebooks-test: $(STAMP)
	@ls notebooks/[0-9][0-9]_*.ipynb >/dev/null 2>&1 || { echo "error: no notebooks/NN_*.ipynb to test" >&2; exit 1; }
	$(INLINE) $(BIN)/python -m pytest $(NBVAL_FLAGS) notebooks/

test: lint unit notebooks-test

tour: $(STAMP)
	$(INLINE) $(BIN)/python -m tensorcompress.tour notebooks/ --html build/html

notebooks: $(STAMP)
	$(INLINE) $(BIN)/python -m tensorcompress.tour notebooks/ --in-place

bench: $(STAMP)
	@for f in benchmarks/*.py; do [ -e "$$f" ] || continue; echo "== $$f"; $(BIN)/python $$f || exit 1; done

# Student version: solutions replaced by NotImplementedError, hidden tests removed (tensorcompress/student.py).
student: $(STAMP)
	$(BIN)/python -m tensorcompress.student notebooks/ build/student/

# Through tensorcompress.lab, which adds --allow-root for root (containers) and --no-browser where there is no
# display, and gives kernels the inline back-end (tests/test_lab.py starts it and asks the server over loopback).
# LAB_ARGS: further JupyterLab options, e.g. make lab LAB_ARGS="--port=8890 --ip=0.0.0.0".
lab: $(STAMP)
	$(BIN)/python -m tensorcompress.lab notebooks/ $(LAB_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache .hypothesis
