"""Execute the tutorial notebooks in place, with their outputs, for readers who do not run them
(GitHub shows the stored figures and tables): ``make notebooks``, i.e.
``python -m dfq_gpu.tutorial._build [notebooks/NN_name.ipynb ...]``.

Each notebook is run top to bottom on a fresh ``python3`` kernel of this interpreter (this
checkout first on the kernel's ``PYTHONPATH``, matplotlib's inline backend, widget state stored)
and written back with its outputs. Its metadata then records, under ``"dfq_gpu"``, a hash of its
code cells (:func:`code_hash`), the time the run took and the package version: a test
(``tests/test_notebooks.py``) fails when a committed notebook's code no longer matches what
produced its outputs, or when outputs are missing, without running anything.

The README rows the chapters show are read from the results files in ``benchmarks/results`` (what
a reader's run does); ``tests/test_notebooks.py`` recomputes them separately.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["code_hash", "notebook_paths", "execute", "missing_outputs", "main", "METADATA_KEY"]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
#: The key of the notebook metadata this module writes.
METADATA_KEY = "dfq_gpu"


def notebook_paths() -> list[Path]:
    """The chapters, ``notebooks/NN_*.ipynb``, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def code_hash(nb: Any) -> str:
    """SHA-256 of the notebook's code cells (their sources, in order; trailing whitespace ignored)."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            h.update(src.rstrip().encode())
            h.update(b"\n\x00cell\x00\n")
    return h.hexdigest()


def missing_outputs(nb: Any) -> list[str]:
    """What is missing for a notebook to count as executed: code cells never run, no figure at all,
    or no recorded hash. Empty when it is complete."""
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code" and cell["source"].strip() and cell.get("execution_count") is None:
            problems.append(f"code cell {i} was not executed")
    if not any("image/png" in out.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
               for out in c.get("outputs", [])):
        problems.append("no figure (image/png output) outside widgets")
    if "code_sha256" not in nb.get("metadata", {}).get(METADATA_KEY, {}):
        problems.append(f"no metadata.{METADATA_KEY}.code_sha256 (not written by `make notebooks`)")
    return problems


def _sliced(get_msg: Any, slice_s: float) -> Any:
    from queue import Empty

    async def get(timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return await get_msg(timeout=slice_s if left is None else max(0.0, min(slice_s, left)))
            except Empty:
                if left is not None and left <= slice_s:
                    raise

    return get


def _client_class() -> Any:
    """``NotebookClient`` whose channels wait for messages in one-second slices: on a loaded 2-core
    machine the asyncio poll of a kernel's socket is sometimes never woken, and the client would
    take the reply only when its whole wait times out (``tests/test_notebooks.py`` does the same)."""
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):  # type: ignore[no-untyped-def]
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg, 1.0)
            return kc

    return Client


def execute(path: Path, timeout: int = 600) -> tuple[Any, float]:
    """Run ``path`` top to bottom on a fresh kernel and write it back with its outputs and hash."""
    import nbformat

    import dfq_gpu

    NotebookClient = _client_class()

    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env_before["PYTHONPATH"]]
                                                              if env_before["PYTHONPATH"] else []))
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures as PNG
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout, startup_timeout=120, allow_errors=False,
                            store_widget_state=True, record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    nb.metadata[METADATA_KEY] = {"code_sha256": code_hash(nb), "seconds": round(seconds, 1),
                                 "version": dfq_gpu.__version__}
    nbformat.write(nb, path)
    return nb, seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a).resolve() for a in args] or notebook_paths()
    worst = 0.0
    for p in paths:
        _, seconds = execute(p)
        worst = max(worst, seconds)
        print(f"{p.name}: executed in {seconds:.1f} s", flush=True)
    print(f"{len(paths)} notebooks written with their outputs; slowest {worst:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
