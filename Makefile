# Every target creates .venv and installs on first use; later runs only re-install when pyproject.toml or
# constraints.txt (the tested versions of every dependency but torch) changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
# This project's machines find the CPU build of torch==2.13.0 on local disk; on stock PyPI the same pin is a
# CUDA build of several GB: there, make TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'
TORCH  ?= torch==2.13.0
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 4000000000
export MALLOC_TOP_PAD_ ?= 268435456

.PHONY: demo test bench lint install lock
install: $(STAMP)

# the tool alone (what `make demo` needs), then the dev extras (tests, Triton's interpreter, the recipe's
# praat-parselmouth, ruff)
$(BASE): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e .
	touch $(BASE)

$(STAMP): $(BASE)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(BASE)
	$(VENV)/bin/sepcli separate examples/mix.wav -o out/demo --overwrite
	@ls -l out/demo

# Two pytest workers (pytest-xdist), whole test files to one worker (a module's fixtures are built once): the tests
# run single-threaded (tests/conftest.py), so on a 2-CPU machine the second worker halves the wall time (cold numba
# cache, AVX2 EPYC: 657 s -> 364 s). One process: make test PYTEST_WORKERS='-n 0'
PYTEST_WORKERS ?= -n 2 --dist loadfile
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

lint: $(STAMP)
	$(VENV)/bin/ruff check sepcli tests benchmarks recipes

# re-resolve the dependencies from pyproject.toml's ranges in a scratch venv and record the versions
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q $(TORCH) && .venv-lock/bin/pip install -q -e '.[dev]'
	{ head -2 constraints.txt; .venv-lock/bin/pip freeze | grep -v '^-e\|^sepcli\|^torch==\|^#'; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock
