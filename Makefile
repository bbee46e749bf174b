# Set-up and the two entry points of README's quick start: `make demo` and `make test`.
# Everything lives in a project-local virtualenv (.venv); Debian packages the
# tests need (Fashion-MNIST data, Chromium for the browser test) come from apt.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= pinned,notebooks,export,test
APT_PACKAGES := dataset-fashion-mnist chromium

.PHONY: demo test test-fast notebooks mutants system-deps venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

demo: venv
	$(PY) -m dfq_gpu demo

# JOBS worker processes (pytest-xdist; tests/conftest.py keeps a module's tests on one worker).
JOBS ?= 2

test: venv system-deps
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup --no-loadscope-reorder

# Everything but the notebooks and the browser test.
test-fast: venv system-deps
	$(PY) -m pytest -q -n $(JOBS) --dist loadgroup --no-loadscope-reorder -m "not browser" \
		--ignore=tests/test_notebooks.py

# Execute every tutorial notebook in place and store its outputs (figures, tables, static copies of
# the widgets) and a hash of its code cells, for readers on GitHub; tests/test_notebooks.py checks
# that the committed notebooks are fresh. About 4 minutes on 2 cores.
notebooks: venv
	$(PY) -m dfq_gpu.tutorial._build

# Mutation check of the tests (not in CI: about an hour on 2 cores); report in benchmarks/results/mutants.md.
mutants: venv system-deps
	$(PY) scripts/mutants.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
