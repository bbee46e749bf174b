# Set-up and the two entry points of README's quick start: `make demo` and `make test`.
# Everything lives in a project-local virtualenv (.venv); Debian packages the
# tests need (Fashion-MNIST data, Chromium for the browser test) come from apt.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= pinned,notebooks,export,test
APT_PACKAGES := dataset-fashion-mnist chromium

.PHONY: demo test test-fast mutants system-deps venv clean

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

test: venv system-deps
	$(PY) -m pytest -q

# Everything but the notebooks and the browser test.
test-fast: venv system-deps
	$(PY) -m pytest -q -m "not browser" --ignore=tests/test_notebooks.py

# Mutation check of the tests (not in CI: about an hour on 2 cores); report in benchmarks/results/mutants.md.
mutants: venv system-deps
	$(PY) scripts/mutants.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
