"""Run every tutorial notebook (``notebooks/NN_*.ipynb``) top to bottom, as a reader would.

Each chapter is executed with ``nbclient`` on the ``python3`` kernel of the interpreter running
the tests (the package is put on the kernel's ``PYTHONPATH``; the kernel talks over IPC sockets),
with widget state stored. A chapter fails on any cell error, on a widget that reports an error in
its status line, when it shows no plot at all, when it uses more than its CPU-time budget, or when
what it prints is wrong: every chapter has checks on its outputs (:data:`CHECKS`), and the accuracy
tables of chapters 2-5 must agree with the README's results table. Those rows are recomputed from
the code (``DFQ_TUTORIAL_USE_RESULTS=0``: the results files in ``benchmarks/results`` are not read),
so a change that moves the README's numbers fails here. A probe cell appended to each chapter moves
its widget's controls in the kernel and checks that the widget recomputes (:data:`PROBES`). The
executed notebooks and the times are written to ``artifacts/notebooks/`` (git-ignored), never back
into ``notebooks/``.

The README rows are computed once for the session, before the first chapter, into the cache the
chapters share (``DFQ_TUTORIAL_CACHE_DIR``), and each chapter prints them from there: a reader's
chapter reads them from ``benchmarks/results``, so a chapter's CPU budget measures what a reader's
run costs, not the recomputation the comparison with the README needs.
``DFQ_NOTEBOOK_USE_RESULTS=1`` lets the chapters read the results files instead (faster, for local
runs; the README comparison then checks the files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (not `python -m pytest`) without the package installed
    sys.path.insert(0, str(ROOT))
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = ROOT / "artifacts" / "notebooks"

#: CPU seconds per torch thread a chapter may use, kernel and its child processes together (the
#: target: under 3 minutes each on a 2-core machine, where the notebooks use one torch thread, so
#: this is about the wall-clock time on a machine with nothing else running). CPU time rather than
#: wall time, so that other jobs on a shared machine do not make the test fail.
CPU_BUDGET_S = float(os.environ.get("DFQ_NOTEBOOK_CPU_BUDGET", "180"))
#: Wall-clock limit per cell, against hangs.
CELL_TIMEOUT_S = int(os.environ.get("DFQ_NOTEBOOK_CELL_TIMEOUT", "420"))

_CPU_PROBE = """import json as _json, resource as _resource, torch as _torch
_s, _c = _resource.getrusage(_resource.RUSAGE_SELF), _resource.getrusage(_resource.RUSAGE_CHILDREN)
print(_json.dumps({"cpu_seconds": _s.ru_utime + _s.ru_stime + _c.ru_utime + _c.ru_stime,
                   "threads": _torch.get_num_threads()}))"""


#: Code appended to a chapter (after its last cell, in the executed copy only): moves the controls
#: of the chapter's widget as a reader would, and checks that the widget recomputed.
PROBES = {
    "01_quantization_basics": """
_before = explorer.text.value
explorer.bits.value = 6
assert explorer.text.value != _before and explorer.last["levels"] == 64, explorer.text.value
explorer.mode.value = "symmetric"
assert explorer.last["zero_point"] == 0 and explorer.last["levels"] == 63, explorer.last["levels"]
""",
    "02_per_tensor_quantization": """
_before = explorer.text.value
explorer.layer.value = "_blocks.0._depthwise_conv"
assert explorer.text.value != _before and "_blocks.0._depthwise_conv" in explorer.text.value, explorer.text.value
explorer.bits.value = 4
assert "per-tensor 4-bit grid" in explorer.text.value, explorer.text.value
_r = explorer.update("_blocks.0._depthwise_conv", 8)
_ok = np.isfinite(_r["sqnr_channel"]) & np.isfinite(_r["sqnr_tensor"])  # all-zero channels: inf
_c, _t = np.median(_r["sqnr_channel"][_ok]), np.median(_r["sqnr_tensor"][_ok])
assert _c > _t + 6, (_c, _t)
""",
    "03_cross_layer_equalization": """
_before = explorer.text.value
explorer.sweep.value = 0
assert explorer.text.value != _before, explorer.text.value
explorer.region.value = 5
explorer.sweep.value = explorer.sweep.max
_res = explorer.update(5, explorer.sweep.max)
assert _res["objective"] > _res["objective_before"], _res  # the paper's objective: sum of products
# the guards rerun the real equalization: without the dead-channel guard the W8A8 SQNR collapses
_guarded = explorer._result(explorer.settings())["metrics"].sqnr_db
explorer.dead.value = 0.0
_st, _m = explorer.stepper, explorer._result(explorer.settings())["metrics"]
assert _st is not stepper and _st.dead_threshold == 0.0 and "dB" in explorer.text.value, explorer.text.value
assert _m.sqnr_db < _guarded - 5, (_m.sqnr_db, _guarded)
""",
    "04_bias_absorption": """
_before = explorer.text.value
explorer.n.value = 1.0
assert explorer.text.value != _before and "beta - 1 gamma" in explorer.text.value, explorer.text.value
_v1, _v3 = explorer.view(layer, 1.0), explorer.view(layer, 3.0)
assert (_v1.c >= _v3.c - 1e-12).all() and _v1.c.max() > _v3.c.max()
# the slider also requantizes the network and shows its SQNR
assert (1.0, True) in explorer.network and "logit SQNR" in explorer.text.value, explorer.text.value
""",
    "05_bias_correction": """
_before = explorer.text.value
explorer.mode.value = "none"
assert explorer.text.value != _before and "bias correction <b>none</b>" in explorer.text.value, explorer.text.value
explorer.bits.value = 8
assert explorer.text.value.startswith("W8"), explorer.text.value
""",
    "06_int8_triton_kernels": """
_before = tiles.text.value
tiles.pid.value = 4
tiles.k.value = 2
assert tiles.text.value != _before and "program <b>4</b>" in tiles.text.value, tiles.text.value
""",
    "07_your_own_model": """
_n, _before = len(dash.history), dash.text.value
dash.granularity.value = "channel"
assert len(dash.history) == _n + 1 and dash.text.value != _before, (len(dash.history), dash.text.value)
assert "per-channel" in dash.history[0]["label"], dash.history[0]["label"]
dash.weight_bits.value = 6
assert len(dash.history) == _n + 2 and dash.history[0]["label"].startswith("W6"), dash.history[0]["label"]
""",
}

#: README rows each chapter's accuracy table must show (and agree with).
README_ROWS = {
    "02_per_tensor_quantization": ["FP32", "W8 naive per-tensor", "W8 naive per-channel", "W8A8 naive per-tensor"],
    "03_cross_layer_equalization": ["W8A8 naive per-tensor", "W8A8 +CLE", "W8A8 DFQ, relu6=replace",
                                    "W8A8 DFQ, relu6=keep", "W8A8 +CLE +absorption +bias corr. (DFQ)"],
    "04_bias_absorption": ["W8A8 +CLE", "W8A8 +CLE +absorption"],
    "05_bias_correction": ["W8A8 +CLE +absorption", "W8A8 +CLE +absorption +bias corr. (DFQ)"],
}
#: What README says of those rows, checked on the numbers each chapter computed (not on README's):
#: (better row, worse row, the least SQNR margin in dB). README measured 12.6, 12.0, 17.6 and 5.1 dB.
README_CLAIMS = {
    "02_per_tensor_quantization": [("W8 naive per-channel", "W8 naive per-tensor", 8.0)],
    "03_cross_layer_equalization": [("W8A8 +CLE +absorption +bias corr. (DFQ)", "W8A8 naive per-tensor", 8.0),
                                    ("W8A8 +CLE +absorption +bias corr. (DFQ)", "W8A8 DFQ, relu6=replace", 8.0)],
    "05_bias_correction": [("W8A8 +CLE +absorption +bias corr. (DFQ)", "W8A8 +CLE +absorption", 4.0)],
}
#: Tolerances against the README (same model, same 160 views, same code): two images of top-1 and
#: of agreement, 0.3 dB of logit SQNR (thread counts can change float sums in the last bits).
TOL = {"top1": 1.3, "agreement": 0.013, "sqnr_db": 0.3}


def _readme_table() -> dict[str, dict[str, float | None]]:
    """The README's results table: variant -> top-1, agreement, SQNR dB."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and cells[5] in ("yes", "no"):
            rows[cells[0]] = {"top1": float(cells[1]), "agreement": float(cells[3]),
                              "sqnr_db": None if cells[4] == "-" else float(cells[4])}
    assert "W8A8 +CLE +absorption +bias corr. (DFQ)" in rows, "README has no results table"
    return rows


def _printed_table(text: str) -> dict[str, dict[str, float | None]]:
    """Rows of ``dfq_gpu.ablation.format_table`` output found in ``text``."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 7 and cells[5] in ("yes", "no") and re.fullmatch(r"[\d.]+", cells[1]):
            rows[cells[0]] = {"top1": float(cells[1]), "agreement": float(cells[3]),
                              "sqnr_db": None if cells[4] == "-" else float(cells[4])}
    return rows


def _num(pattern: str, text: str, group: int = 1) -> float:
    m = re.search(pattern, text)
    assert m, f"no match for {pattern!r} in the chapter's output"
    return float(m.group(group))


def _check_01(text: str) -> None:
    assert "scale 0.1800, zero point 6" in text
    assert 5.0 < _num(r"exercise 1: asymmetric [\d.]+ dB, symmetric [\d.]+ dB, difference ([\d.]+) dB", text) < 7.0
    tensor, channel = (_num(r"exercise 3: head layer at 8 bits, per tensor ([\d.]+) dB, per output channel ([\d.]+) dB",
                            text, g) for g in (1, 2))
    assert channel > tensor + 2, (tensor, channel)  # per-channel scales of the right shape help
    lines = re.findall(r"(\d) bits: step [\d.]+, error variance ([\d.e+-]+), s\^2/12 = ([\d.e+-]+)", text)
    assert len(lines) == 3, lines
    for bits, var, model in lines:  # uniform rounding error: variance s^2/12
        assert abs(float(var) / float(model) - 1) < 0.05, (bits, var, model)
    sq = [float(v) for v in re.findall(r"4 bits, range x[\d.]+: SQNR\s+([\d.-]+) dB", text)]
    assert len(sq) == 3 and sq[1] > sq[0] and sq[1] > sq[2], sq  # a narrower range helps, until clipping


def _check_02(text: str) -> None:
    assert "folded 49 batch norms" in text
    assert "folded 49 conv -> BN pairs by hand: weights and biases equal the library's" in text
    # the first depthwise layer: only a minority of its channels stays within +-1 (7 of 32)
    m = re.search(r"_blocks\.0\._depthwise_conv: (\d+) channels, (\d+) within \+-1, (\d+) beyond \+-10", text)
    assert m and (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (32, 7, 3), m and m.group(0)
    assert "20 images x 8 views: one image is 5.0 points of top-1" in text
    lo, hi = (_num(r"W8 naive per-tensor\s+agreement [\d.]+ \(95% interval over 20 images \[([\d.]+), ([\d.]+)\]\)",
                   text, g) for g in (1, 2))
    assert lo < 0.8 < 0.95 < hi, (lo, hi)  # 20 images cannot pin agreement down to a few points
    assert _num(r"agreement=100\.00% sqnr=([\d.]+) dB", text) > 80  # folding does not change the function
    m = re.search(r"grid steps per channel, min ([\d.]+), median ([\d.]+), max ([\d.]+)", text)
    assert m and float(m.group(1)) < 1 and float(m.group(3)) > 250, m and m.group(0)


def _check_03(text: str) -> None:
    assert _num(r"ReLU : max \|relu\(s x\) - s relu\(x\)\|\s+= ([\d.e+-]+)", text) == 0.0
    assert _num(r"ReLU6: max \|relu6\(s x\) - s relu6\(x\)\| = ([\d.e+-]+)", text) > 1.0
    assert _num(r"clamp: max \|clamp\(s x\) - s relu6\(x\)\| = ([\d.e+-]+)", text) == 0.0
    assert _num(r"max output change: ([\d.e+-]+)", text) < 1e-9
    before, after = _num(r"output SQNR with both layers quantized: ([\d.]+) dB -> ([\d.]+) dB", text, 1), \
        _num(r"output SQNR with both layers quantized: ([\d.]+) dB -> ([\d.]+) dB", text, 2)
    assert after > before, (before, after)
    before, after = (_num(r"the paper's objective sum_i p1_i p2_i: ([\d.]+) -> ([\d.]+)", text, g) for g in (1, 2))
    assert after > before, (before, after)
    assert "scales, stem weights, bias and clamp bounds equal the library's sweep" in text
    agreement = {mode: _num(rf"relu6={mode}\s+FP32 agreement ([\d.]+)", text) for mode in ("clip", "replace", "keep")}
    assert agreement["clip"] == 1.0 and agreement["keep"] == 1.0 and agreement["replace"] < 0.8, agreement


def _check_04(text: str) -> None:
    assert "c recomputed == report.absorbed_out: True" in text
    assert "biases and clamp bounds equal the library's pass" in text
    assert _num(r"exact: n=32 top1=- top5=- agreement=100\.00% sqnr=([\d.]+) dB", text) > 60
    assert _num(r"ReLU\(z\) - c == ReLU\(z - c\) on ([\d.]+) of the samples", text) > 0.998


def _check_05(text: str) -> None:
    before = _num(r"4-bit output SQNR: ([\d.-]+) dB, after correction ([\d.-]+) dB", text, 1)
    after = _num(r"4-bit output SQNR: ([\d.-]+) dB, after correction ([\d.-]+) dB", text, 2)
    assert after > before + 2, (before, after)
    sweep = {(int(b), m): float(v) for b, m, v in re.findall(r"^\s*(\d) (none|analytic|empirical)\s+([\d.-]+)",
                                                             text, flags=re.M)}
    assert {(4, "none"), (6, "none"), (8, "none"), (8, "analytic")} <= set(sweep), sweep
    for bits in (4, 6, 8):  # the data-free correction helps at every bit width
        assert sweep[(bits, "analytic")] > sweep[(bits, "none")] + 1, (bits, sweep)
    assert "the hand-written eps E[x] equals the library's correction" in text
    # the per-layer prediction does not show the shift that accumulates through the quantized network
    rows = {m.group(1): [float(m.group(i)) for i in range(2, 6)] for m in re.finditer(
        r"^(\S+)\s+W6 mean \|shift\|: own ([\d.]+), accumulated ([\d.]+), accumulated after analytic correction "
        r"([\d.]+); corr\(predicted, accumulated\) ([\d.-]+)", text, flags=re.M)}
    assert len(rows) == 4, rows
    own, acc, left, corr = rows["_blocks.2._project_conv"]
    assert acc > 2 * own and corr < 0.6 and left < acc, rows["_blocks.2._project_conv"]
    assert rows["_blocks.0._depthwise_conv"][3] > 0.95  # the first layers: nothing accumulated yet


def _check_06(text: str) -> None:
    assert "by hand == kernels.reference.int8_gemm: True" in text
    assert re.search(r"my_int8_gemm \((Triton interpreter|GPU)\) == kernels\.reference\.int8_gemm: True", text)
    assert "def round_clamp" in text  # the shared epilogue is shown
    assert "exercise 1: m = 3e-4: 0 outputs differ" in text  # round half up vs half to even: only ties differ
    assert _num(r"m = 2\^-10: (\d+) of \d+ differ, each by 1", text) > 0
    assert "half to even  : [0, 2, 2, 4, 4, 6, 6, 8]" in text and "exercise 2: grouped order, bit-exact: True" in text
    assert "tiled NumPy == reference: True | Triton == reference: True" in text
    assert len(re.findall(r"^bit-exact ", text, flags=re.M)) == 4 and "MISMATCH" not in text
    assert "logits equal to the simulation's bit for bit: True" in text
    if "Triton kernels (interpreter)" in text:
        assert "Triton kernels (interpreter) == integer reference on 4 images: True" in text
    # the benchmark section: GPU reports, or the statement that there are none and the CPU runs
    assert "No GPU results yet" in text or "img/s" in text
    assert "all bit-exact: True" in text and "benchmarks/e2e.py" in text


def _check_07(text: str) -> None:
    assert _num(r"quantized: n=512 top1=[\d.]+% top5=[\d.]+% agreement=([\d.]+)%", text) >= 98.0
    for why in ("not scale-equivariant", "concatenation", "residual region"):
        assert why in text, why
    naive = _num(r"W4A8 naive: agreement [\d.]+, SQNR ([\d.-]+) dB", text)
    dfq = _num(r"W4A8 DFQ  : agreement [\d.]+, SQNR ([\d.-]+) dB", text)
    assert dfq > naive, (naive, dfq)


#: What each chapter must print (cell outputs, HTML stripped of tags).
CHECKS = {"01_quantization_basics": _check_01, "02_per_tensor_quantization": _check_02,
          "03_cross_layer_equalization": _check_03, "04_bias_absorption": _check_04,
          "05_bias_correction": _check_05, "06_int8_triton_kernels": _check_06, "07_your_own_model": _check_07}


@pytest.fixture(scope="session")
def tutorial_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chapters' cache of README rows, one for the test process (a module fixture can be set up
    more than once when other modules' tests run in between), with the rows computed once."""
    path = tmp_path_factory.mktemp("tutorial-cache")
    if os.environ.get("DFQ_NOTEBOOK_USE_RESULTS") != "1":
        _compute_readme_rows(path)
    return path


@pytest.fixture(scope="module")
def kernel_env(tutorial_cache: Path):
    """Environment the notebook kernels inherit: this checkout importable, the session's cache,
    no GPU assumptions (``dfq_gpu.tutorial.common.setup`` decides)."""
    names = ("PYTHONPATH", "DFQ_TUTORIAL_CACHE_DIR", "DFQ_TUTORIAL_USE_RESULTS", "DFQ_BENCHMARK_RESULTS_DIR",
             "MPLBACKEND")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["DFQ_TUTORIAL_CACHE_DIR"] = str(tutorial_cache)
    # recompute the README rows with the code as it is (not read from benchmarks/results)
    os.environ["DFQ_TUTORIAL_USE_RESULTS"] = "1" if os.environ.get("DFQ_NOTEBOOK_USE_RESULTS") == "1" else "0"
    os.environ.pop("DFQ_BENCHMARK_RESULTS_DIR", None)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend draws the figures
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _compute_readme_rows(cache: Path) -> None:
    """Compute the README rows the chapters print, once, into the session's cache, as a chapter
    would (``dfq_gpu.tutorial.common.ablation``, one torch thread on a 2-core machine). A reader's
    chapter reads these rows from ``benchmarks/results``; here each chapter finds them in the
    cache instead, so that its CPU budget measures what a reader's run costs, and the rows it
    prints still come from the code as it is."""
    import torch

    from dfq_gpu.tutorial import common

    names = list(dict.fromkeys(n for rows in README_ROWS.values() for n in rows))
    threads, saved = torch.get_num_threads(), os.environ.get("DFQ_TUTORIAL_CACHE_DIR")
    torch.set_num_threads(common.default_threads())
    os.environ["DFQ_TUTORIAL_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    try:
        _, how = common.ablation(names, use_results_file=False, progress=False)
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop("DFQ_TUTORIAL_CACHE_DIR", None)
        else:
            os.environ["DFQ_TUTORIAL_CACHE_DIR"] = saved
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / "times.json", "a") as f:
        f.write(json.dumps({"readme_rows": names, "seconds": round(time.perf_counter() - t0, 1), "how": how}) + "\n")


class _Client(nbclient.NotebookClient):
    """``NotebookClient`` whose channels wait for messages in one-second slices.

    Seen on this 2-core machine in one run out of four to six of chapter 5: the kernel finishes a
    long cell and sends its reply (its header is dated then), both processes go idle, and the
    client takes the reply only when its wait times out, 392 s later. The reply had been in the
    client's socket all along, but the asyncio poll of that socket was never woken. A poll that
    times out checks the socket once more and finds it, so here every wait on the shell and
    IOPub channels is a series of polls of at most a second: a missed wake-up costs a second.
    """

    poll_slice_s = 1.0

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()
        for channel in (kc.shell_channel, kc.iopub_channel):
            channel.get_msg = _sliced(channel.get_msg, self.poll_slice_s)
        return kc


def _sliced(get_msg, slice_s: float):
    from queue import Empty

    async def get(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                return await get_msg(timeout=slice_s if left is None else max(0.0, min(slice_s, left)))
            except Empty:
                if left is not None and left <= slice_s:
                    raise

    return get


def _run(path: Path):
    """Execute a copy of the notebook on a fresh kernel (over IPC sockets in a short temporary
    directory: no TCP ports to collide with other kernels on the machine). Returns the executed
    copy, the wall time and the exception that stopped it, if any."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    nb = nbformat.read(path, as_version=4)
    if path.stem in PROBES:  # moves the chapter's widget; only in the executed copy
        nb.cells.append(nbformat.v4.new_code_cell(PROBES[path.stem]))
    nb.cells.append(nbformat.v4.new_code_cell(_CPU_PROBE))  # measures the run; only in the executed copy
    sockets = tempfile.mkdtemp(prefix="dfq-nb-")  # socket paths must stay short (108 bytes)
    km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "k"))
    client = _Client(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120, allow_errors=False, record_timing=True,
                     store_widget_state=True, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as exc:  # reported by the test, after the executed copy is saved
        error = exc
    finally:
        if km.has_kernel:  # the client does not own a kernel manager it was given: shut it down here
            run_sync(km.shutdown_kernel)(now=True)
        shutil.rmtree(sockets, ignore_errors=True)
    return nb, time.perf_counter() - t0, error


def _widget_states(nb) -> dict:
    return nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


def _images(nb) -> int:
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            n += "image/png" in out.get("data", {})
    for model in _widget_states(nb).values():
        if model.get("model_name") == "OutputModel":
            n += sum("image/png" in o.get("data", {}) for o in model["state"].get("outputs", []))
    return n


def _output_text(nb) -> str:
    """Everything the chapter's cells showed as text: streams, plain text and HTML without tags."""
    import html as _html

    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            data = out.get("data", {})
            if "text/html" in data:
                parts.append(_html.unescape(re.sub(r"<[^>]+>", "", data["text/html"])))
            elif "text/plain" in data and "application/vnd.jupyter.widget-view+json" not in data:
                parts.append(data["text/plain"])
    return "\n".join(parts)


def test_notebooks_found() -> None:
    assert len(NOTEBOOKS) == 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_fresh(path: Path) -> None:
    """The committed notebook carries the outputs of its current code (``make notebooks`` wrote them
    and recorded the hash of its code cells): edited code without regenerated outputs fails here.
    Reads the file only; executing the chapters is :func:`test_notebook_runs`'s job."""
    from dfq_gpu.tutorial._build import METADATA_KEY, code_hash, missing_outputs

    nb = nbformat.read(path, as_version=4)
    assert not missing_outputs(nb), f"{path.name}: {missing_outputs(nb)}; run `make notebooks`"
    recorded = nb.metadata[METADATA_KEY]["code_sha256"]
    assert recorded == code_hash(nb), (f"{path.name}: its code cells changed since `make notebooks` produced its "
                                       "outputs; run `make notebooks` (or python -m dfq_gpu.tutorial._build {path})")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was stored with an error output"
    # as a reader runs it (the results files of benchmarks/results read, not recomputed): under 90 s
    # on the 2-core CPU, timed by `make notebooks`
    assert nb.metadata[METADATA_KEY]["seconds"] < 90, nb.metadata[METADATA_KEY]
    # a static figure before every widget: each cell that shows a widget also shows a PNG before it
    for i, cell in enumerate(nb.cells):
        kinds = [next(iter(o.get("data", {})), None) for o in cell.get("outputs", []) if o.get("data")]
        widgets = [o for o in cell.get("outputs", []) if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
                   and "%|" not in str(o["data"].get("text/plain", ""))]  # a tqdm progress bar is no explorer
        if widgets:
            assert "image/png" in [k for o in cell["outputs"] for k in o.get("data", {})], \
                f"{path.name} cell {i}: a widget without a static figure before it ({kinds})"


#: Statements the notebooks used to get wrong, checked in the committed text (cheap).
CORRECTED = {
    "01_quantization_basics": (["w.amin(1)"], []),
    "02_per_tensor_quantization": (["one image is worth **5 points**", "63% top-1"],
                                   ["0.6 points", "most stay within", "Why per-tensor int8 breaks"]),
    "03_cross_layer_equalization": (["**product** of the", "relative* ranges are equal"],
                                    ["maximizes the sum\nof the channels' precisions"]),
    "05_bias_correction": (["about a minute", "accumulated"], ["about half a minute"]),
    "06_int8_triton_kernels": (["libdevice.rint", "**only under the interpreter**", "@triton.jit"], []),
}


@pytest.mark.parametrize("stem", sorted(CORRECTED))
def test_corrected_statements(stem: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    must, must_not = CORRECTED[stem]
    for phrase in must:
        assert phrase in text, (stem, phrase)
    for phrase in must_not:
        assert phrase not in text, (stem, phrase)


def test_ablation_rows_computed_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           request: pytest.FixtureRequest) -> None:
    """The notebooks' README rows without a results file: computed by ``run_ablation``, then
    read back from the cache (on the small Fashion-MNIST model, so that it takes seconds)."""
    from dfq_gpu.ablation import run_ablation
    from dfq_gpu.tutorial import common

    import torch

    monkeypatch.setenv("DFQ_TUTORIAL_CACHE_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(common.default_threads())  # as in the notebooks: 1 on a 2-core machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    model, pre, test = common.fmnist(128)
    names = ["FP32", "W8 naive per-tensor", "W8A8 +CLE +absorption +bias corr. (DFQ)"]
    kw = dict(model=model, data=test, model_name="fmnist_mobilenet", input_range=pre.input_range, progress=False)
    first, how = common.ablation(names, use_results_file=False, **kw)
    assert "computed 3 rows" in how and [r["name"] for r in first.rows] == names
    again, how = common.ablation(names[1:], use_results_file=False, **kw)
    assert "2 rows from the cache" in how and again.rows == first.rows[1:]
    direct = run_ablation(model, test, rows=common.ablation_rows(names), input_range=pre.input_range,
                          progress=False)
    assert [r["sqnr_db"] for r in direct.rows] == [r["sqnr_db"] for r in first.rows]
    assert [r["top1"] for r in direct.rows] == [r["top1"] for r in first.rows]
    # the FP32 outputs are cached too: a row computed later runs no FP32 pass
    assert len(list(tmp_path.glob("reference-*.pt"))) == 1

    def no_fp32_pass(*args, **kwargs):
        raise AssertionError("the FP32 outputs were computed again")

    for module in ("dfq_gpu.ablation", "dfq_gpu.evaluate"):
        monkeypatch.setattr(sys.modules[module], "collect_outputs", no_fp32_pass)
    later, how = common.ablation(["W8A8 naive per-tensor"], use_results_file=False, **kw)
    assert "computed 1 rows" in how
    monkeypatch.undo()
    direct = run_ablation(model, test, rows=common.ablation_rows(["W8A8 naive per-tensor"]),
                          input_range=pre.input_range, progress=False)
    assert later.rows[0]["sqnr_db"] == direct.rows[0]["sqnr_db"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_env: None, record_property) -> None:
    for attempt in (1, 2):
        nb, seconds, error = _run(path)
        hung = isinstance(error, (nbclient.exceptions.CellTimeoutError, nbclient.exceptions.DeadKernelError))
        if not hung or attempt == 2:
            break
        # A kernel that stopped answering, not an error in the notebook. Seen now and then on a
        # heavily loaded machine (ipykernel 7): the kernel sits idle and the reply to the running
        # cell never arrives. Run the chapter once more on a fresh kernel.
        warnings.warn(f"{path.name}: {type(error).__name__} on attempt 1, running it again")
    probe = nb.cells[-1].get("outputs", [])
    usage = json.loads(probe[0]["text"]) if probe and "text" in probe[0] else {}
    # CPU seconds per torch thread: about the wall-clock time on a machine with nothing else running
    cpu = usage["cpu_seconds"] / max(1, usage["threads"]) if usage else None
    record_property("seconds", round(seconds, 1))
    record_property("cpu_seconds", cpu)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTIFACTS / path.name)
    with open(ARTIFACTS / "times.json", "a") as f:
        f.write(json.dumps({"notebook": path.name, "seconds": round(seconds, 1),
                            "cpu_seconds": None if cpu is None else round(cpu, 1), "attempts": attempt,
                            "python": sys.executable}) + "\n")
    if error is not None:
        raise error
    errors = [m["state"]["value"] for m in _widget_states(nb).values()
              if m.get("model_name") == "HTMLModel" and "color:#b00" in str(m["state"].get("value", ""))]
    assert not errors, f"{path.name}: a widget reported an error: {errors}"
    assert _images(nb) > 0, f"{path.name} drew no plot"
    text = _output_text(nb)
    CHECKS[path.stem](text)
    if path.stem in README_ROWS:
        readme, printed = _readme_table(), _printed_table(text)
        assert set(printed) == set(README_ROWS[path.stem]), (sorted(printed), README_ROWS[path.stem])
        if os.environ.get("DFQ_TUTORIAL_USE_RESULTS") == "0":  # the rows were computed, not read from a file
            assert "read from benchmarks/results" not in text
        for name, row in printed.items():
            for key, tol in TOL.items():
                want, got = readme[name][key], row[key]
                assert (want is None) == (got is None) and (want is None or abs(got - want) <= tol), \
                    f"{path.name}: {name!r} {key} = {got}, README says {want} (tolerance {tol})"
        for better, worse, margin in README_CLAIMS.get(path.stem, ()):
            gain = printed[better]["sqnr_db"] - printed[worse]["sqnr_db"]
            assert gain >= margin, f"{path.name}: {better!r} is only {gain:.2f} dB above {worse!r} (README: >= {margin})"
    assert cpu is not None and cpu < CPU_BUDGET_S, \
        f"{path.name} used {cpu} CPU seconds ({seconds:.0f} s wall clock); budget {CPU_BUDGET_S:.0f} s"


# ----------------------------------------------------------------------------- chapter 6's results
def _kernel_case(name: str, ms: float | None, exact: bool = True, goal_met: bool | None = True) -> dict:
    """One case as ``benchmarks/kernels.py`` writes it (``_entry``)."""
    return {"kind": name.split()[0], "name": name, "shape": {}, "bit_exact": exact, "ms": ms, "ms_with_launch": ms,
            "tops": 812.5, "gbps": 1234.5, "roofline_floor_ms": 0.01, "pct_of_roofline": 41.0,
            "baselines": {"int_mm_ms": 0.02, "fp16_matmul_ms": None}, "speedup": {"vs_int_mm": 1.7},
            "goal": ">= 1.0x torch._int_mm", "goal_met": goal_met}


def _gpu_reports(d: Path) -> None:
    """What benchmarks/gpu_check.sh leaves in benchmarks/results on an H200 (shapes of the real
    schemas, made-up numbers), a run cut short, a compile-only report and unrelated JSON."""
    (d / "kernels_h200.json").write_text(json.dumps({
        "schema": "dfq_int8-kernel-bench/1", "mode": "full", "device": "NVIDIA H200", "backend": "triton",
        "torch": "2.14.1", "triton": "3.8.0", "timer": "do_bench_cudagraph", "copy_bandwidth_gbps": 3900.0,
        "peak_int8_tops": 1979.0, "all_bit_exact": True, "note": None,
        "results": [_kernel_case("gemm M=8192 K=8192 N=8192", 1.25), _kernel_case("depthwise3x3 s1", 0.5),
                    _kernel_case("add 256x56x56x24", None, goal_met=False)]}))
    res1 = {"int8": {"ms": 2.0, "images_per_s": 16000.0}, "fp16_eager": {"ms": 4.0, "images_per_s": 8000.0},
            "fp16_compile": {"ms": None, "error": "skipped (time budget)"},
            "fp32_eager": {"ms": 6.0, "images_per_s": 5333.3},
            "speedup_vs_fp16_eager": 2.0, "speedup_vs_fp16_compile": None, "speedup_vs_fp32_eager": 3.0}
    (d / "e2e_h200.json").write_text(json.dumps({
        "schema": "dfq_int8-e2e-bench/1", "mode": "full", "device": "NVIDIA H200", "torch": "2.14.1",
        "triton": "3.8.0", "int8_backend": "auto (Triton)", "image_size": 224, "batches": [1, 32, 256],
        "models": {"efficientnet_lite0": {"results": {"32": res1, "1": {"int8": {"ms": 1.0}}}},
                   "resnet50": {"results": {}}},
        "skipped": ["resnet50 batch 1: time budget"], "complete": False}))
    (d / "e2e_h100.json").write_text('{"schema": "dfq_int8-e2e-bench/1", "mode": "full", "mod')  # cut short
    (d / "kernels.json").write_text(json.dumps({
        "schema": "dfq_int8-kernel-compile/1", "mode": "compile-only", "target": "cuda:90", "triton": "3.8.0",
        "all_ok": True, "results": [{"kernel": "gemm wzp=False", "config": {}, "wgmma": True, "shared_bytes": 65536,
                                     "registers": 255, "spill_bytes": 0, "rint": True, "fp32_fma": False, "ok": True},
                                    {"kernel": "gemm wzp=False", "config": {}, "wgmma": True, "shared_bytes": 32768,
                                     "registers": 168, "spill_bytes": 8, "rint": True, "fp32_fma": False, "ok": True}]}))
    (d / "ablation_efficientnet_lite0_cpu.json").write_text(json.dumps({"model": "efficientnet_lite0", "rows": []}))


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list:
    """What ``ch06_int8_kernels.show_benchmark_results`` displays: HTML as text, figures as figures."""
    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    items: list = []

    def display(*objs, **_kw):
        for o in objs:
            items.append(o.data if isinstance(o, IPython.display.HTML) else o)

    monkeypatch.setattr(IPython.display, "display", display)
    return items


def test_benchmark_results_without_gpu_reports(tmp_path: Path, shown: list) -> None:
    """No GPU results: chapter 6 says so and shows the CPU (--quick) results instead."""
    from matplotlib.figure import Figure

    from dfq_gpu.tutorial import ch06_int8_kernels as ch

    assert not ch.benchmark_reports(tmp_path / "missing").has_gpu_results
    out = ch.show_benchmark_results(tmp_path, run_quick=False)
    assert out == {"kernels": [], "e2e": [], "compile": [], "gpu": False, "unreadable": []}
    html = " ".join(x for x in shown if isinstance(x, str))
    assert html.count("No GPU results yet") == 2 and "kernels_&lt;gpu&gt;.json" in html
    # quick reports already in the folder are shown without running anything
    quick = {"schema": "dfq_int8-kernel-bench/1", "mode": "quick", "device": "CPU (x86_64)",
             "backend": "triton-interpreter", "all_bit_exact": True, "note": "interpreter timings",
             "results": [_kernel_case("gemm M=64 K=64 N=64", 6.5, goal_met=None)]}
    (tmp_path / "kernels_cpu.json").write_text(json.dumps(quick))
    shown.clear()
    out = ch.show_benchmark_results(tmp_path, run_quick=False)
    assert out["kernels"] == [("kernels_cpu.json", "CPU (x86_64)", "cpu")] and not out["gpu"]
    assert sum(isinstance(x, Figure) for x in shown) == 1


def test_benchmark_results_with_gpu_reports(tmp_path: Path, shown: list) -> None:
    """GPU reports from benchmarks/gpu_check.sh: tables and plots, partial runs and broken files
    handled (chapter 6 calls exactly this)."""
    from matplotlib.figure import Figure

    from dfq_gpu.tutorial import ch06_int8_kernels as ch

    _gpu_reports(tmp_path)
    reps = ch.benchmark_reports(tmp_path)
    assert [p.name for p, _ in reps.kernels_gpu] == ["kernels_h200.json"] and reps.has_gpu_results
    assert [p.name for p, _ in reps.compile] == ["kernels.json"] and not reps.kernels_cpu and not reps.e2e_cpu
    assert [p.name for p, _ in reps.unreadable] == ["e2e_h100.json"]
    rows = ch.e2e_rows(reps.e2e_gpu[0][1])
    assert [(r["model"], r["batch"]) for r in rows] == [("efficientnet_lite0", 1), ("efficientnet_lite0", 32)]
    assert rows[0]["int8"] == pytest.approx(1000.0) and rows[1]["fp16_compile"] is None
    out = ch.show_benchmark_results(tmp_path, run_quick=False)
    assert out["gpu"] and out["kernels"] == [("kernels_h200.json", "NVIDIA H200", "gpu")]
    assert out["e2e"] == [("e2e_h200.json", "NVIDIA H200", "gpu")] and out["unreadable"] == ["e2e_h100.json"]
    html = " ".join(x for x in shown if isinstance(x, str))
    assert "No GPU results yet" not in html
    for expected in ("1234.5", "812.5", "16000.0", "skipped (time budget)", "complete: <b>False</b>",
                     "all bit-exact: <b>True</b>", "e2e_h100.json"):
        assert expected in html, expected
    # the compile-only report: one row per kernel over its tiles (count, largest shared memory,
    # register range, worst spill)
    cells = "".join(f"<td style='padding:0 8px'>{c}</td>" for c in ("gemm wzp=False", 2, True, True, 65536, "168-255", 8))
    assert cells in html
    assert sum(isinstance(x, Figure) for x in shown) == 2


def test_results_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results folder: the argument, else ``$DFQ_BENCHMARK_RESULTS_DIR``, else the folder given to
    ``setup`` (if it exists), else ``benchmarks/results`` under the working directory, else none."""
    from dfq_gpu.tutorial import common

    monkeypatch.delenv("DFQ_BENCHMARK_RESULTS_DIR", raising=False)
    monkeypatch.setattr(common, "_SETUP_RESULTS", None)
    monkeypatch.chdir(tmp_path)
    assert common.results_dir() is None
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert common.results_dir() == tmp_path / "benchmarks" / "results"
    monkeypatch.setattr(common, "_SETUP_RESULTS", tmp_path / "missing")
    assert common.results_dir() == tmp_path / "benchmarks" / "results"
    monkeypatch.setattr(common, "_SETUP_RESULTS", tmp_path)
    assert common.results_dir() == tmp_path
    monkeypatch.setenv("DFQ_BENCHMARK_RESULTS_DIR", str(tmp_path / "env"))
    assert common.results_dir() == tmp_path / "env"
    assert common.results_dir(tmp_path / "arg") == tmp_path / "arg"


def test_benchmark_results_without_a_results_folder(tmp_path: Path, shown: list,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a checkout, with no folder given: chapter 6 says that no results were found."""
    from dfq_gpu.tutorial import ch06_int8_kernels as ch
    from dfq_gpu.tutorial import common

    monkeypatch.delenv("DFQ_BENCHMARK_RESULTS_DIR", raising=False)
    monkeypatch.setattr(common, "_SETUP_RESULTS", None)
    monkeypatch.chdir(tmp_path)
    assert ch.benchmark_reports().directory is None
    out = ch.show_benchmark_results(run_quick=False)
    assert out == {"kernels": [], "e2e": [], "compile": [], "gpu": False, "unreadable": []}
    html = " ".join(x for x in shown if isinstance(x, str))
    assert "No benchmark results found; pass a directory" in html
    shown.clear()
    ch.show_benchmark_results(tmp_path / "nowhere", run_quick=False)
    html = " ".join(x for x in shown if isinstance(x, str))
    assert "No benchmark results found in " in html and "nowhere" in html


@pytest.mark.slow
def test_quick_kernel_benchmark_runs_as_a_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chapter 6's fresh ``--quick`` run: ``python -m dfq_gpu.bench.kernels`` in another process,
    from a folder that is not a checkout."""
    from dfq_gpu.tutorial import ch06_int8_kernels as ch

    monkeypatch.chdir(tmp_path)
    rep = ch.run_quick_kernel_benchmark(tmp_path / "k.json")
    assert rep["mode"] == "quick" and rep["all_bit_exact"] is True
    assert rep["schema"].startswith(ch.KERNEL_SCHEMA)
