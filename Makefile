# The two set-up-to-result commands of the README; each installs what it needs by itself
# (scripts/bootstrap.sh: project-local .venv, torch, detectron2, d2kd._C) and reuses it after.
#
#   make demo   main job on the built-in data
#   make test   the test suite (what CI runs)

PYTHON := .venv/bin/python
# glibc's allocator returns freed blocks of large tensors to the OS and faults them back in at
# every step; keeping them makes CPU training 2-5x faster (see ../shared/BASELINES.md).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 1000000000000
# Idle OpenMP threads sleep instead of spinning: with two processes on two cores, spinning threads
# steal each other's core and a step gets 10-40x slower.
export OMP_WAIT_POLICY := PASSIVE
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-build

setup:
	bash scripts/bootstrap.sh

demo: setup
	$(PYTHON) -m d2kd.tools.demo

test: setup
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

clean-build:
	rm -rf build d2kd/_C*.so
