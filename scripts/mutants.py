"""Mutation check of the test suite: does ``make test-fast`` fail when the numerics are wrong?

Each entry of :data:`MUTANTS` is one small semantic bug (a factor of two in bias correction,
``floor`` for ``round``, one quantization level too few, ...). The script copies the working
tree (tracked files and new ones git does not ignore) to a temporary directory once, then for
each mutant edits one file of that copy, runs the tests there and restores the file. The
checkout itself is never touched.

For each mutant the tests run in two stages, both with ``-x`` (stop at the first failure):

1. the test files most likely to notice it (``Mutant.tests``, fast), then, if they all pass,
2. the whole of ``make test-fast`` (everything but the notebooks and the browser test), or the
   browser test for mutants of the tutorial widgets (``Mutant.browser``).

A mutant is *killed* when a stage fails and *survives* when both pass. A killed mutant only says
that ``make test-fast`` fails (stage 1 is a subset of it). The report (``--out``, JSON and a
Markdown table) names the first failing test of each killed mutant.

    .venv/bin/python scripts/mutants.py                      # all mutants, report to benchmarks/results/
    .venv/bin/python scripts/mutants.py --only avgpool_hw_minus_1 --keep

Too slow for CI (minutes per surviving mutant); run it after changing tests or numerics
(``make mutants``) and commit its report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST_ARGS = ("-m", "not browser", "--ignore=tests/test_notebooks.py")


@dataclass(frozen=True)
class Mutant:
    """One semantic bug: ``old`` (which must occur exactly once in ``path``) becomes ``new``."""

    name: str
    path: str
    old: str
    new: str
    why: str
    tests: tuple[str, ...] = ()  # run first: the tests expected to notice
    browser: bool = False  # a tutorial-widget bug: stage 2 is the browser test


MUTANTS: tuple[Mutant, ...] = (
    # ---- bias correction ------------------------------------------------------------------
    Mutant("bias_correction_half", "dfq_gpu/quant/bias_correction.py",
           "add_bias(m, -delta)", "add_bias(m, -0.5 * delta)",
           "analytic bias correction applied at half strength",
           ("tests/test_quantize.py::test_analytic_bias_correction_removes_the_mean_error",)),
    Mutant("bias_correction_removed", "dfq_gpu/quant/bias_correction.py",
           "add_bias(m, -delta)", "add_bias(m, -0.0 * delta)",
           "analytic bias correction computed but not applied",
           ("tests/test_quantize.py::test_analytic_bias_correction_removes_the_mean_error",)),
    Mutant("bias_correction_sign", "dfq_gpu/quant/bias_correction.py",
           "add_bias(m, -delta)", "add_bias(m, delta)",
           "analytic bias correction with the wrong sign",
           ("tests/test_quantize.py::test_analytic_bias_correction_removes_the_mean_error",)),
    # ---- quantization grids -----------------------------------------------------------------
    Mutant("fakequant_floor", "dfq_gpu/nn.py",
           "return q.round_().add_(zp)", "return q.floor_().add_(zp)",
           "activation fake-quant rounds by floor instead of to nearest",
           ("tests/test_quantize.py::test_bit_widths_and_granularities",)),
    Mutant("weight_quant_floor", "dfq_gpu/nn.py",
           "q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)",
           "q = torch.clamp(torch.floor(x / scale) + zero_point, qmin, qmax)",
           "weight fake-quant rounds by floor instead of to nearest",
           ("tests/test_quantize.py::test_bit_widths_and_granularities",)),
    Mutant("quant_step_one_level_short", "dfq_gpu/formulas.py",
           "scale = np.where(width > 0, width / levels, 1.0)",
           "scale = np.where(width > 0, width / (levels - 1), 1.0)",
           "quantization step (hi - lo) / (2^b - 2): one level too few",
           ("tests/test_formulas.py",)),
    Mutant("zero_point_sign", "dfq_gpu/formulas.py",
           "zp = np.clip(np.round(-lo / scale), 0, levels)", "zp = np.clip(np.round(lo / scale), 0, levels)",
           "asymmetric zero point with the wrong sign",
           ("tests/test_formulas.py",)),
    Mutant("per_channel_axis", "dfq_gpu/quant/quantizer.py",
           "wd = w.detach().to(torch.float64).reshape(w.shape[0], -1)",
           "wd = w.detach().to(torch.float64).transpose(0, 1).reshape(w.shape[0], -1)",
           "per-channel weight ranges taken along the input-channel axis",
           ("tests/test_quantize.py::test_bit_widths_and_granularities",)),
    Mutant("bias_rounding_floor", "dfq_gpu/quant/requant.py",
           "return torch.clamp(torch.round(b / step), INT32_MIN, INT32_MAX).to(torch.int64)",
           "return torch.clamp(torch.floor(b / step), INT32_MIN, INT32_MAX).to(torch.int64)",
           "biases rounded down onto the int32 grid",
           ("tests/test_integer_layers.py",)),
    # ---- integer parameters -------------------------------------------------------------------
    Mutant("avgpool_hw_minus_1", "dfq_gpu/quant/requant.py",
           "return kref.float32_value((float(s_x) / float(s_y)) / int(hw))",
           "return kref.float32_value((float(s_x) / float(s_y)) / (int(hw) - 1))",
           "average-pool multiplier divided by H*W - 1",
           ("tests/test_integer_layers.py",)),
    Mutant("avgpool_float_hw_minus_1", "dfq_gpu/quant/requant.py",
           "return kref.float32_value(float(s_x) / int(hw))",
           "return kref.float32_value(float(s_x) / (int(hw) - 1))",
           "average pool with a float output divided by H*W - 1",
           ("tests/test_integer_layers.py",)),
    Mutant("requant_multiplier_1pct", "dfq_gpu/quant/requant.py",
           "return (step / float(s_y)).to(torch.float32)", "return (step / float(s_y) * 1.01).to(torch.float32)",
           "requantization multiplier 1% too large",
           ("tests/test_integer_layers.py",)),
    Mutant("add_multipliers_swapped", "dfq_gpu/quant/requant.py",
           "ia, ib = (q, p) if s_a >= s_b else (p, q)", "ia, ib = (p, q) if s_a >= s_b else (q, p)",
           "residual add weighs its inputs with each other's scales",
           ("tests/test_integer_layers.py",)),
    Mutant("clamp_bound_off_by_one", "dfq_gpu/quant/requant.py",
           "return torch.clamp(torch.round(b.to(torch.float32) * inv) + zp, y.qmin, y.qmax)",
           "return torch.clamp(torch.round(b.to(torch.float32) * inv) + zp + 1, y.qmin, y.qmax)",
           "fused clamp bounds one step too high",
           ("tests/test_integer_layers.py",)),
    # ---- passes -------------------------------------------------------------------------------
    Mutant("absorption_sign", "dfq_gpu/passes/absorb.py",
           "add_bias(sink, delta)", "add_bias(sink, -delta)",
           "absorbed shift subtracted from the next layer instead of added",
           ("tests/test_prepare.py",)),
    Mutant("equalization_inverted", "dfq_gpu/passes/equalize.py",
           "s = fm.equalization_scales(r_src, r_dst, dead_threshold=cfg.cle_dead_threshold, bound=None)",
           "s = 1.0 / fm.equalization_scales(r_src, r_dst, dead_threshold=cfg.cle_dead_threshold, bound=None)",
           "equalization scales inverted (ranges pushed apart)",
           ("tests/test_prepare.py",)),
    Mutant("bn_fold_mean_sign", "dfq_gpu/passes/bn_fold.py",
           "new_b = (b - mean) * k + beta", "new_b = (b + mean) * k + beta",
           "BN folding adds the running mean instead of subtracting it",
           ("tests/test_prepare.py",)),
    Mutant("clipped_normal_mean_sign", "dfq_gpu/formulas.py",
           "inside = mu * (pb - pa) + sigma * (fa - fb)", "inside = mu * (pb - pa) + sigma * (fb - fa)",
           "clipped-normal mean (E[x] of bias correction) with the pdf terms swapped",
           ("tests/test_formulas.py",)),
    Mutant("equalize_clamp_bounds_not_scaled", "dfq_gpu/passes/equalize.py",
           "m.hi.mul_(m.hi.new_tensor(inv))", "m.hi.mul_(m.hi.new_tensor(s))",
           "equalization scales a per-channel clamp's upper bound the wrong way",
           ("tests/test_prepare.py",)),
    Mutant("int8_dequantize_zero_point", "kernels/reference/contract.py",
           "return (q.to(torch.int32) - z).to(torch.float32) * s", "return (q.to(torch.int32) + z).to(torch.float32) * s",
           "the integer reference dequantizes with the zero point's sign flipped",
           ("tests/test_integer_layers.py", "tests/test_int8.py")),
    # ---- tutorial widgets ---------------------------------------------------------------------
    Mutant("widget_wrong_bits", "dfq_gpu/tutorial/ch01_basics.py",
           "            r = quantize_tensor(w, bits, clip, symmetric)",
           "            r = quantize_tensor(w, bits - 1, clip, symmetric)",
           "chapter 1's quantization explorer quantizes at one bit less than its slider shows",
           browser=True),
    # ---- kernels ------------------------------------------------------------------------------
    Mutant("epilogue_round_half_up", "kernels/requant.py",
           "r = (y + 12582912.0) - 12582912.0", "r = tl.floor(y + 0.5)",
           "the Triton epilogue rounds halves up instead of to even",
           ("tests/test_kernels.py",)),
    Mutant("maxpool_negative_other", "kernels/pool.py",
           "xv = tl.load(x_ptrs, mask=m, other=0).to(tl.int32)", "xv = tl.load(x_ptrs, mask=m, other=-128).to(tl.int32)",
           "max pool loads padded taps with a negative constant `other` (wrong on sm_90)",
           ("tests/test_kernels.py",)),
)


def _copy_repo(dest: Path) -> None:
    # the working tree as it is: tracked files and new ones not ignored
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for rel in files.decode().split("\0"):
        if not rel:
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return m.group(1) if m else "(see log)"


def _pytest(copy: Path, args: list[str], timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", *args]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return -1, out + "\n(timed out)", time.monotonic() - t0


@dataclass
class Result:
    name: str
    why: str
    status: str  # killed / survived / error
    stage: int = 0
    failing_test: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_mutant(copy: Path, mut: Mutant, timeout: float, log_dir: Path, first_stage_only: bool = False) -> Result:
    target = copy / mut.path
    original = target.read_text()
    if original.count(mut.old) != 1:
        return Result(mut.name, mut.why, "error", notes=[f"{mut.old!r} occurs {original.count(mut.old)} times"])
    target.write_text(original.replace(mut.old, mut.new))
    total = 0.0
    try:
        stages: list[list[str]] = []
        if mut.tests:
            stages.append([*FAST_ARGS, *mut.tests])
        if not (first_stage_only and stages):
            stages.append(["-m", "browser", "tests/test_browser.py"] if mut.browser else list(FAST_ARGS))
        for i, args in enumerate(stages, start=1):
            rc, out, secs = _pytest(copy, args, timeout)
            total += secs
            (log_dir / f"{mut.name}.stage{i}.log").write_text(out)
            if rc == 5:  # no tests collected: a typo in the entry
                return Result(mut.name, mut.why, "error", i, seconds=total, notes=["no tests collected"])
            if rc != 0:
                return Result(mut.name, mut.why, "killed", i, _first_failure(out), total)
        return Result(mut.name, mut.why, "survived", len(stages), seconds=total)
    finally:
        target.write_text(original)


def _check_copy_is_imported(copy: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(copy))
    p = subprocess.run([sys.executable, "-c", "import dfq_gpu, kernels; print(dfq_gpu.__file__, kernels.__file__)"],
                       cwd=copy, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"the copy of the repository does not import:\n{p.stderr}")
    where = p.stdout.split()
    if not all(Path(p).resolve().is_relative_to(copy.resolve()) for p in where):
        raise SystemExit(f"the copy is not what Python imports: {where}")


def markdown(results: list[Result]) -> str:
    rows = ["| mutant | bug | result | first failing test | s |", "|---|---|---|---|---:|"]
    for r in results:
        where = r.failing_test or "; ".join(r.notes)
        rows.append(f"| `{r.name}` | {r.why} | {r.status} (stage {r.stage}) | `{where}` | {r.seconds:.0f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="names of the mutants to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mutants.json"),
                    help="JSON report; a Markdown table is written beside it (.md)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per stage")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy and its logs")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--first-stage-only", action="store_true",
                    help="run only each mutant's own tests (a survivor here is not a survivor of make test-fast)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:28s} {m.path:36s} {m.why}")
        return 0
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants: {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="dfq-mutants-"))
    copy, logs = tmp / "repo", tmp / "logs"
    copy.mkdir()
    logs.mkdir()
    results: list[Result] = []
    try:
        _copy_repo(copy)
        _check_copy_is_imported(copy)
        for mut in chosen:
            res = run_mutant(copy, mut, args.timeout, logs, args.first_stage_only)
            results.append(res)
            print(f"{res.status:9s} {mut.name:28s} stage {res.stage} {res.seconds:6.0f} s  {res.failing_test}"
                  f"{'; '.join(res.notes)}", flush=True)
    finally:
        if args.keep:
            print(f"copy and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"commit": commit, "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": sys.version.split()[0],
              "killed": sum(r.status == "killed" for r in results), "total": len(results),
              "results": [asdict(r) for r in results]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(f"Mutants killed: {report['killed']} of {report['total']} "
                                      f"(commit {commit}, {report['machine']}).\n\n{markdown(results)}\n")
    print(f"{report['killed']} of {report['total']} mutants killed; report in {out}")
    return 0 if report["killed"] == report["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
