"""Read a GPU run's reports and say what they show: the goals met or missed, the defaults the
measurements support, and the README's tables.

    python benchmarks/review.py [--results benchmarks/results] [--gpu h200] [--out review.md] [--json]

``benchmarks/gpu_check.sh`` runs it last on what it wrote (``$OUT/review_<gpu>.md``). It reads
``kernels_<gpu>.json`` and ``e2e_<gpu>.json`` (either may be missing or cut short) and prints
Markdown with three parts:

* **Goals**: every acceptance point a GPU run decides, measured against its goal: no timer
  fallbacks, every case bit-exact, each 3x3 convolution at >= 0.7x the project's GEMM on its
  equivalent shape and >= 1.6x cuDNN fp16, each depthwise case at >= 60% of the copy bandwidth of
  its bytes, each network bit-exact against the integer reference on the GPU, ResNet-50 >= 45,000
  and EfficientNet-Lite0 >= 60,000 images/s at batch 256, int8 >= 1.5x fp16 ``torch.compile``,
  the step profile within 5% of the network's replay time. A kernel or network with two variants
  is judged on the one in force and, where the other does better, on that one too.
* **Defaults**: for each switch the run measured both ways (the GEMM/convolution kernel variant,
  the depthwise kernel variant, the depthwise + 1x1 fusion, the stem fusion, the convolution's
  tap loop), the evidence and a suggestion: change a default only where the other setting is
  bit-identical and at least :data:`MARGIN` faster on every network (or case) measured.
* **README tables**: the kernel and end-to-end tables in the README's format.

Nothing is decided here on numbers that are missing: a check without a measurement says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: A setting is suggested for a change only when the other choice is at least this much faster
#: (time ratio) on every network or case measured.
MARGIN = 1.03

#: Throughput goals at batch 256 (images/s) of the roofline issue, on an H200 (an H100 has the
#: same int8 peak).
E2E_GOALS = {"resnet50": 45000.0, "efficientnet_lite0": 60000.0}
#: int8 against fp16 ``torch.compile`` (max-autotune), per network.
COMPILE_GOAL = 1.5
CONV_GOAL_VS_GEMM = 0.7
CONV_GOAL_VS_CUDNN = 1.6
DEPTHWISE_GOAL_PCT_OF_COPY = 60.0
PROFILE_TOLERANCE = 0.05

#: The e2e variants (keys of a batch's results) and the switch each one flips.
E2E_SWITCHES = {
    "int8_gemm_tma": ("kernels gemm_variant", "pointers", "tma"),
    "int8_gemm_pointers": ("kernels gemm_variant", "tma", "pointers"),
    "int8_dw_rows": ("kernels depthwise_variant", "tiles", "rows"),
    "int8_dw_tma": ("kernels depthwise_variant", "tiles", "tma"),
    "int8_dw_tiles": ("kernels depthwise_variant", "rows", "tiles"),
    "int8_dw_project": ("to_int8(fuse_depthwise=...)", "False", "True"),
    "int8_pad_channels_off": ("to_int8(pad_channels=...)", "True", "False"),
}


@dataclass(frozen=True)
class Check:
    """One acceptance point: what was measured against which goal (``met`` None: not measured)."""

    name: str
    measured: str
    goal: str
    met: Optional[bool]


@dataclass(frozen=True)
class Suggestion:
    """A default the run measured both ways: the evidence and what it supports."""

    setting: str
    now: str
    evidence: str
    suggest: str


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _fmt(v: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if not a or not b else a / b


def _geomean(values: Iterable[float]) -> Optional[float]:
    vals = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


# =============================================================================================
# Goals
# =============================================================================================
def _best_variant(case: Mapping[str, Any], key: str, higher: bool = True) -> Tuple[Optional[str], Optional[float]]:
    """The bit-exact variant of a kernel case with the best ``key`` (``(name, value)``)."""
    best: Tuple[Optional[str], Optional[float]] = (None, None)
    for name, v in (case.get("variants") or {}).items():
        val = v.get(key) if isinstance(v, dict) and v.get("bit_exact") else None
        if val is not None and (best[1] is None or (val > best[1] if higher else val < best[1])):
            best = (name, val)
    return best


def kernel_checks(rep: Mapping[str, Any]) -> List[Check]:
    """The acceptance points of a kernel benchmark report."""
    results = [r for r in rep.get("results") or [] if isinstance(r, dict)]
    fallbacks = rep.get("timer_fallback_count")
    if fallbacks is None:  # older reports: count the cases that say they fell back, if they say
        timers = [r["timer"] for r in results if isinstance(r.get("timer"), dict)]
        fallbacks = sum(1 for t in timers if t.get("fallback")) if timers else None
    checks = [
        Check("kernel benchmark complete", str(rep.get("complete")), "True", rep.get("complete") is True),
        Check("kernel timer fallbacks", "not recorded" if fallbacks is None else str(fallbacks), "0",
              None if fallbacks is None else fallbacks == 0),
        Check("every kernel case bit-exact", str(rep.get("all_bit_exact")), "True", rep.get("all_bit_exact") is True),
    ]
    for r in results:
        sp = r.get("speedup") or {}
        if r.get("kind") == "conv3x3":
            g, c = sp.get("vs_equivalent_gemm"), sp.get("vs_cudnn_fp16")
            met = None if g is None or c is None else (g >= CONV_GOAL_VS_GEMM and c >= CONV_GOAL_VS_CUDNN)
            measured = f"{_fmt(g)}x GEMM, {_fmt(c)}x cuDNN"
            other = {n: v for n, v in (r.get("variants") or {}).items()
                     if isinstance(v, dict) and v.get("bit_exact") and v.get("ms") != r.get("ms")}
            for name, v in other.items():
                vg, vc = v.get("vs_equivalent_gemm"), v.get("vs_cudnn_fp16")
                measured += f" ({name}: {_fmt(vg)}x, {_fmt(vc)}x)"
                if vg is not None and vc is not None and vg >= CONV_GOAL_VS_GEMM and vc >= CONV_GOAL_VS_CUDNN:
                    met = True
            checks.append(Check(r.get("name", "conv3x3"), measured,
                                f">= {CONV_GOAL_VS_GEMM}x GEMM and >= {CONV_GOAL_VS_CUDNN}x cuDNN fp16", met))
        elif r.get("kind") == "depthwise":
            pct = (r.get("bandwidth") or {}).get("pct_of_torch_copy")
            if sp.get("vs_copy") is not None:
                pct = 100.0 * sp["vs_copy"]
            name, best = _best_variant(r, "pct_of_copy")
            measured = f"{_fmt(pct, '.0f', '%')} of copy" + (f" ({name}: {best:.0f}%)" if best is not None else "")
            top = max([p for p in (pct, best) if p is not None], default=None)
            checks.append(Check(r.get("name", "depthwise"), measured, f">= {DEPTHWISE_GOAL_PCT_OF_COPY:.0f}% of copy",
                                None if top is None else top >= DEPTHWISE_GOAL_PCT_OF_COPY))
    return checks


def _largest_batch(entry: Mapping[str, Any]) -> Optional[str]:
    batches = [b for b in (entry.get("results") or {}) if str(b).isdigit()]
    return max(batches, key=int) if batches else None


def e2e_checks(rep: Mapping[str, Any]) -> List[Check]:
    """The acceptance points of an end-to-end report."""
    checks = [Check("e2e benchmark complete", str(rep.get("complete")), "True", rep.get("complete") is True)]
    for name, entry in (rep.get("models") or {}).items():
        tvr = entry.get("triton_vs_reference") or {}
        checks.append(Check(f"{name}: Triton == reference on the GPU",
                            f"bit_exact={tvr.get('bit_exact')} (batch {tvr.get('batch')})", "True",
                            None if not tvr else tvr.get("bit_exact") is True))
        b = _largest_batch(entry)
        res = (entry.get("results") or {}).get(b) or {}
        ips = (res.get("int8") or {}).get("images_per_s")
        best = max(((k, v.get("images_per_s")) for k, v in res.items()
                    if k in E2E_SWITCHES and isinstance(v, dict) and v.get("equal_to_default")
                    and v.get("images_per_s")), key=lambda kv: kv[1], default=(None, None))
        extra = f" ({best[0]}: {best[1]:.0f})" if best[1] and (ips is None or best[1] > ips) else ""
        goal = E2E_GOALS.get(name)
        if goal is not None:
            top = max([v for v in (ips, best[1]) if v], default=None)
            checks.append(Check(f"{name}: int8 images/s at batch {b}", f"{_fmt(ips, '.0f')}{extra}",
                                f">= {goal:.0f}", None if top is None else top >= goal))
        sp = res.get("speedup_vs_fp16_compile")
        fp16c = res.get("fp16_compile") or {}
        mode = fp16c.get("mode")
        checks.append(Check(f"{name}: int8 / fp16 torch.compile ({mode or 'not run'}) at batch {b}",
                            _fmt(sp, ".2f", "x") if sp is not None else (fp16c.get("error") or "-"),
                            f">= {COMPILE_GOAL}x", None if sp is None else sp >= COMPILE_GOAL))
        prof = entry.get("step_profile") or {}
        ratio = prof.get("sum_over_network")
        checks.append(Check(f"{name}: step profile sum / network replay", _fmt(ratio, ".3f"),
                            f"within {PROFILE_TOLERANCE:.0%}",
                            None if ratio is None else abs(ratio - 1.0) <= PROFILE_TOLERANCE))
    return checks


# =============================================================================================
# Defaults
# =============================================================================================
def e2e_suggestions(rep: Mapping[str, Any]) -> List[Suggestion]:
    """The switches the end-to-end run timed both ways at its largest batch (``E2E_SWITCHES``)."""
    seen: Dict[Tuple[str, str], List[Tuple[str, Optional[float], Any, str, str]]] = {}
    for name, entry in (rep.get("models") or {}).items():
        res = (entry.get("results") or {}).get(_largest_batch(entry)) or {}
        base = (res.get("int8") or {}).get("ms")
        for key, (setting, now, other) in E2E_SWITCHES.items():
            v = res.get(key)
            if isinstance(v, dict):
                seen.setdefault((setting, other), []).append((name, _ratio(base, v.get("ms")), v.get("equal_to_default"),
                                                              now, other))  # fmt: skip
    out = []
    for (setting, _), rows in seen.items():
        now, other = rows[0][3], rows[0][4]
        evidence = "; ".join(f"{n}: {other} {_fmt(r, '.3f', 'x')} the time of {now}"
                             + ("" if eq else f" (NOT bit-identical: {eq})") for n, r, eq, _, _ in rows)
        ok = all(eq is True and r is not None and r >= MARGIN for _, r, eq, _, _ in rows)
        out.append(Suggestion(setting, now, evidence, f"change to {other}" if ok else f"keep {now}"))
    return out


def kernel_suggestions(rep: Mapping[str, Any]) -> List[Suggestion]:
    """The switches the kernel benchmark timed both ways: the GEMM/conv variant per case, the
    stem fusion, and the convolution's tap loop."""
    results = [r for r in rep.get("results") or [] if isinstance(r, dict)]
    out = []
    tma = [(r["name"], (r.get("speedup") or {}).get("tma_vs_pointers")) for r in results
           if (r.get("speedup") or {}).get("tma_vs_pointers") is not None]
    if tma:
        gm = _geomean(v for _, v in tma)
        out.append(Suggestion("kernels gemm_variant (per kernel)", "pointers",
                              "; ".join(f"{n}: tma {v:.2f}x" for n, v in tma) + f"; geometric mean {_fmt(gm)}x",
                              "see the end-to-end row: it decides"))
    padded = [(r["name"], (r.get("speedup") or {}).get("padded_vs_unpadded"), (r.get("padded") or {}).get("bit_exact"))
              for r in results if r.get("padded")]
    if padded:
        out.append(Suggestion("to_int8(pad_channels=...) (narrow GEMMs)", "True",
                              "; ".join(f"{n}: padded {_fmt(v)}x" + ("" if ok else " (NOT bit-exact)")
                                        for n, v, ok in padded),
                              "see the end-to-end row: it decides"))
    stem = [(r["name"], (r.get("speedup") or {}).get("vs_quantize_then_conv")) for r in results
            if r.get("kind") == "stem"]
    if stem:
        slower = [n for n, v in stem if v is not None and v < 1.0]
        out.append(Suggestion("to_int8(fuse_stem=...)", "True",
                              "; ".join(f"{n}: fused {_fmt(v)}x quantize + flat-K convolution" for n, v in stem),
                              "keep True" if not slower and all(v is not None for _, v in stem)
                              else f"restrict or turn off: slower on {', '.join(slower) or 'unmeasured cases'}"))
    loops = []
    for r in results:
        lp = r.get("loops") or {}
        u, s = (lp.get("unrolled") or {}).get("ms"), (lp.get("stepped") or {}).get("ms")
        if u and s:
            loops.append((r["name"], s / u, lp.get("threshold")))
    if loops:
        faster = {n: ("unrolled" if q > 1 else "stepped") for n, q, _ in loops}
        out.append(Suggestion("kernels.conv.TAP_UNROLL_MIN_STEPS", str(loops[0][2]),
                              "; ".join(f"{n}: unrolled {q:.2f}x stepped ({faster[n]} faster)" for n, q, _ in loops),
                              "set it so each case takes its faster loop (a case's steps per tap: C / BLOCK_K)"))
    return out


# =============================================================================================
# README tables
# =============================================================================================
def kernel_table(rep: Mapping[str, Any]) -> str:
    """The README's kernel table: per case the time, TOPS or bandwidth, the baselines."""
    lines = ["| case | ms | TOPS | % of copy | vs baseline | other variant |",
             "| --- | ---: | ---: | ---: | --- | --- |"]
    for r in rep.get("results") or []:
        if not isinstance(r, dict) or r.get("ms") is None:
            continue
        sp = {k: v for k, v in (r.get("speedup") or {}).items() if v is not None and k != "tma_vs_pointers"}
        base = ", ".join(f"{k[3:] if k.startswith('vs_') else k} {v:.2f}x" for k, v in sp.items())
        variants = "; ".join(f"{n} {v['ms']:.3f} ms" for n, v in (r.get("variants") or {}).items()
                             if isinstance(v, dict) and v.get("ms") and v.get("ms") != r.get("ms"))
        pct = (r.get("bandwidth") or {}).get("pct_of_torch_copy")
        lines.append(f"| {r.get('name')} | {r['ms']:.3f} | {_fmt(r.get('tops'), '.0f')} | {_fmt(pct, '.0f', '%')} "
                     f"| {base} | {variants} |")
    return "\n".join(lines)


def e2e_table(rep: Mapping[str, Any]) -> str:
    """The README's end-to-end table: images/s of int8 and the baselines, per model and batch."""
    lines = ["| model | batch | int8 | fp16 eager (BN folded) | fp16 torch.compile | fp32 eager | int8 / fp16 eager "
             "| int8 / fp16 compile |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in (rep.get("models") or {}).items():
        for b, res in sorted((entry.get("results") or {}).items(), key=lambda kv: -int(kv[0])):
            ips = {k: (res.get(k) or {}).get("images_per_s") for k in ("int8", "fp16_eager", "fp16_compile",
                                                                         "fp32_eager")}
            lines.append(f"| {name} | {b} | {_fmt(ips['int8'], '.0f')} | {_fmt(ips['fp16_eager'], '.0f')} | "
                         f"{_fmt(ips['fp16_compile'], '.0f')} | {_fmt(ips['fp32_eager'], '.0f')} | "
                         f"{_fmt(res.get('speedup_vs_fp16_eager'), '.2f', 'x')} | "
                         f"{_fmt(res.get('speedup_vs_fp16_compile'), '.2f', 'x')} |")
    return "\n".join(lines)


# =============================================================================================
# Report
# =============================================================================================
def gpu_tags(results: Path) -> List[str]:
    """The GPU tags with a kernel or end-to-end report in ``results`` (``kernels_<tag>.json``)."""
    tags = set()
    for p in results.glob("*.json"):
        for prefix in ("kernels_", "e2e_"):
            if p.stem.startswith(prefix) and p.stem[len(prefix):] not in ("cpu", "quick"):
                tags.add(p.stem[len(prefix):])
    return sorted(tags)


def review(results: Path, gpu: str) -> Dict[str, Any]:
    """Everything the reports of ``gpu`` in ``results`` show (JSON-ready)."""
    k = _load(results / f"kernels_{gpu}.json")
    e = _load(results / f"e2e_{gpu}.json")
    checks = (kernel_checks(k) if k else []) + (e2e_checks(e) if e else [])
    suggestions = (e2e_suggestions(e) if e else []) + (kernel_suggestions(k) if k else [])
    return {
        "gpu": gpu,
        "device": (k or e or {}).get("device"),
        "triton": (k or e or {}).get("triton"),
        "torch": (k or e or {}).get("torch"),
        "reports": {"kernels": k is not None, "e2e": e is not None},
        "checks": [asdict(c) for c in checks],
        "all_met": bool(checks) and all(c.met is True for c in checks),
        "suggestions": [asdict(s) for s in suggestions],
        "kernel_table": kernel_table(k) if k else None,
        "e2e_table": e2e_table(e) if e else None,
    }


def markdown(rev: Mapping[str, Any]) -> str:
    """The review as Markdown."""
    mark = {True: "yes", False: "**no**", None: "not measured"}
    out = [f"# GPU run: {rev['device'] or rev['gpu']} (Triton {rev['triton']}, torch {rev['torch']})", ""]
    missing = [k for k, ok in rev["reports"].items() if not ok]
    if missing:
        names = ", ".join(f"{m}_{rev['gpu']}.json" for m in missing)
        out += [f"Missing or unreadable: {names}.", ""]
    out += ["## Goals", "", "| check | measured | goal | met |", "| --- | --- | --- | --- |"]
    out += [f"| {c['name']} | {c['measured']} | {c['goal']} | {mark[c['met']]} |" for c in rev["checks"]]
    out += ["", f"All met: **{rev['all_met']}**", "", "## Defaults", ""]
    if rev["suggestions"]:
        out += ["| setting | now | evidence | suggestion |", "| --- | --- | --- | --- |"]
        out += [f"| {s['setting']} | {s['now']} | {s['evidence']} | {s['suggest']} |" for s in rev["suggestions"]]
    else:
        out.append("Nothing was measured both ways.")
    for title, key in (("Kernels", "kernel_table"), ("End to end (images/s)", "e2e_table")):
        if rev[key]:
            out += ["", f"## {title}", "", rev[key]]
    return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the review."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks") / "results",
                        help="the folder with kernels_<gpu>.json and e2e_<gpu>.json (default: benchmarks/results)")
    parser.add_argument("--gpu", default=None, help="the GPU tag (default: the only one in the folder)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = parser.parse_args(argv)
    tags = gpu_tags(args.results)
    gpu = args.gpu
    if gpu is None:
        if len(tags) != 1:
            raise SystemExit(f"pass --gpu: the reports in {args.results} are of {tags or 'no GPU'}")
        gpu = tags[0]
    rev = review(args.results, gpu)
    if not any(rev["reports"].values()):
        raise SystemExit(f"no kernels_{gpu}.json or e2e_{gpu}.json readable in {args.results}")
    text = markdown(rev)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(json.dumps(rev, indent=1) + "\n" if args.json else text)
    return rev


if __name__ == "__main__":
    main()
