# Developer and CI entry points. CI runs .ci/run: `make test`, then `make test-image`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp

# pip inside our own venv: the root-user warning and version nag are noise.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.DEFAULT_GOAL := test
.PHONY: venv test demo bench image test-image clean

venv: $(STAMP)

# (Re)create the venv when it is missing or has no working pip (a failed
# `python3 -m venv` on a machine without ensurepip leaves such a husk), and
# reinstall only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
		echo "creating $(VENV) with $(PYTHON)"; \
		$(PYTHON) -m venv --clear $(VENV); \
	fi
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

test: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/pytest -q

demo: venv
	$(BIN)/pgtls-proxy demo

# `make bench BENCH_ARGS=--quick` for one short repetition; bench/run.py --help lists the rest.
# matplotlib (the chart) and py-spy (--profile) are the benchmark's own, optional, requirements.
bench: venv
	bash bench/ensure-tools.sh
	$(BIN)/python -m pip install -q -r bench/requirements.txt \
		|| echo "bench: matplotlib/py-spy not installed: no chart, no profile"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The container image, pgtls-proxy:<version> and :latest, with docker or podman
# (ENGINE=docker|podman chooses); README.md, "Containers".
image:
	bash scripts/build-image.sh

# Builds the image with podman and runs it for real: tests/image (left out of `make test`).
test-image: venv
	bash scripts/test-image.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
