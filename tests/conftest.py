"""Test configuration shared by every test module.

Triton kernels run through Triton's interpreter when no CUDA device is present.
``TRITON_INTERPRET`` has to be in the environment before any ``@triton.jit``
function is defined, so it is set here, before the test modules import ``kernels``.

``make test`` runs the tests on several processes (``pytest -n 2 --dist loadgroup``, pytest-xdist):
the cores are shared between the workers (torch threads per worker = cores / workers), the tests
of a module stay on one worker (they share module fixtures: a quantized Lite0, a JupyterLab
server, the notebooks' cache of README rows) except in :data:`SPREAD`, and the longest modules
start first.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
# the processes tests start (the command line, the benchmarks) get the same share of the cores
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

#: Modules whose tests share nothing expensive: each test may run on any worker.
SPREAD = {"test_architectures"}
#: Modules started first (longest first), so that no worker is left with a long module at the end.
FIRST = ("test_notebooks", "test_int8", "test_browser", "test_cli")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        return FIRST.index(stem) if stem in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept
    for item in items:
        if item.path.stem not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


def pytest_configure(config: pytest.Config) -> None:
    """``--dist loadgroup`` (``make test``) needs a pytest that keeps the group pytest-xdist writes
    into each test's id: with pytest 9 and pytest-xdist 3.8 every test is its own group, a module's
    tests are spread over the workers and its module fixtures are set up on each."""
    if getattr(config.option, "dist", None) == "loadgroup" and int(pytest.__version__.split(".")[0]) >= 9:
        raise pytest.UsageError(f"--dist loadgroup does not keep the test groups with pytest {pytest.__version__}; "
                                "install pytest<9 (pyproject.toml's test extra)")
