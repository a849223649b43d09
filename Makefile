# The two set-up commands of README.md, and a few helpers. Everything runs in ./.venv, created on
# first use with torch 2.13.0 (CPU) unless the venv already has a torch, which is kept.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh')

.PHONY: demo test bench install cmake-test cuda-build clean

demo: $(VENV)/.built          ## the main job: train the tiny model on the CPU, sample, evaluate
	$(VENV)/bin/radd-fast demo

test: $(VENV)/.built          ## the test suite, then every benchmark body once
	$(PY) -m pytest tests -q
	$(PY) -m pytest bench -q --benchmark-disable

bench: $(VENV)/.built         ## the benchmarks, timed, with side-by-side speed-ups
	$(PY) -m pytest bench

install: $(VENV)/.built

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q "setuptools>=77" wheel ninja
	$(VENV)/bin/pip install -q --no-build-isolation -e ".[test,plot]"
	touch $@

# Rebuild the extension in place when a source changes (ninja recompiles only what changed).
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) setup.py -q build_ext --inplace
	touch $@

cmake-test: $(VENV)/.deps     ## C++ tests of the CPU kernels against libtorch
	cmake -S . -B build/cmake -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/cmake -j$${MAX_JOBS:-2}
	ctest --test-dir build/cmake --output-on-failure

cuda-build:                   ## compile + link the CUDA kernels (torch 2.14.1 + nvcc), no GPU needed
	.ci/cuda_build.sh

clean:
	rm -rf build radd_fast/_C*.so radd_fast/_build_info.json $(VENV)/.built
