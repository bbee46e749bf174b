"""Ahead-of-time compilation of every int8 kernel for an H100/H200 (``cuda:90``), no GPU needed.

    python benchmarks/kernels.py --compile-only [--all-configs] [--out PATH]

:func:`compile_only` compiles each kernel (one tile each, or every autotune tile) and reports,
per (kernel, tile): wgmma and TMA use, shared memory, registers and spills (``cuobjdump``), and
PTX hazards (a fused multiply-add reaching the rounding, a sign-extended constant ``other``).
It must run without ``TRITON_INTERPRET``. The kernel benchmark's command line calls it.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

import torch
import triton

from kernels import _config

COMPILE_SCHEMA = "dfq_int8-kernel-compile/1"

_PTR = {torch.int8: "*i8", torch.int32: "*i32", torch.float32: "*fp32"}


class TmaDesc(NamedTuple):
    """A compile-only stand-in for a TMA descriptor argument: its dtype and its block shape, each
    dimension a number, the name of a meta-parameter, or a function of the meta-parameters."""

    dtype: torch.dtype
    block: Tuple[Any, ...]

    def block_shape(self, constexprs: Dict[str, Any]) -> List[int]:
        return [d if isinstance(d, int) else constexprs[d] if isinstance(d, str) else d(constexprs)
                for d in self.block]


def _fma_into_rounding(ptx: str) -> bool:
    """Whether a float32 fused multiply-add produces a value that ``cvt.rni`` rounds, following the
    PTX's virtual registers back through clamps, moves and selects."""

    defs: Dict[str, List[Any]] = {}
    for op, dst, srcs in re.findall(r"^\s*(?:@!?%p\d+\s+)?([a-z][\w.]*)\s+(%\w+),\s*([^;]*);", ptx, re.M):
        defs.setdefault(dst, []).append((op, re.findall(r"%\w+", srcs)))
    todo = [src for src in re.findall(r"cvt\.rni\.f32\.f32\s+%\w+,\s*(%\w+);", ptx)]
    seen = set()
    while todo:
        reg = todo.pop()
        if reg in seen:
            continue
        seen.add(reg)
        for op, srcs in defs.get(reg, []):
            if op.startswith("fma"):
                return True
            if op.split(".")[0] in ("min", "max", "mov", "selp", "neg", "abs"):
                todo += srcs
    return False


def _compile_sm90(fn, runtime: Dict[str, Any], constexprs: Dict[str, Any], div16: List[str], num_warps: int,
                  num_stages: int) -> Dict[str, Any]:  # fmt: skip
    """Compile one kernel specialization for cuda:90; report wgmma use, shared memory and spills."""

    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    backend = triton.compiler.make_backend(target)
    # as at run time, an int argument equal to 1 is specialized into a constant (per-channel
    # strides of 1, for instance, let the channel vectors load as wide vectors)
    constexprs = {**constexprs, **{n: 1 for n, v in runtime.items() if type(v) is int and v == 1}}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            v = runtime[name]
            if isinstance(v, TmaDesc):  # a host TMA descriptor whose block shape is the tile's
                block = ", ".join(str(b) for b in v.block_shape(constexprs))
                signature[name] = f"tensordesc<{_PTR[v.dtype][1:]}[{block}]>"
                continue
            signature[name] = _PTR[v] if isinstance(v, torch.dtype) else ("fp32" if isinstance(v, float) else "i32")
    hinted = [n for n, v in runtime.items() if isinstance(v, torch.dtype)] + list(div16)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    src = triton.compiler.ASTSource(fn=fn, constexprs=constexprs, signature=signature, attrs=attrs)
    options = backend.parse_options({"num_warps": num_warps, "num_stages": num_stages})
    cc = triton.compile(src, target=target, options=options.__dict__)
    ptx = cc.asm["ptx"]
    entry: Dict[str, Any] = {
        "wgmma": "wgmma.mma_async" in ptx,
        "cp_async": "cp.async" in ptx,
        "tma": "cp.async.bulk.tensor" in ptx,
        "shared_bytes": int(cc.metadata.shared),
        # float32 fused multiply-adds anywhere (the depthwise float32 accumulation is made of them,
        # exact by its bound) and, what would break bit-exact requantization, one whose result
        # reaches the rounding (the epilogue's `acc * m` contracted with an add)
        "fp32_fma": bool(re.search(r"\bfma\.rn(\.ftz)?\.f32", ptx)),
        "fma_into_rounding": _fma_into_rounding(ptx),
        "rint": "cvt.rni.f32.f32" in ptx,  # round half to even
        # global loads and stores of a single byte: what rows not known to be 16-byte aligned
        # (a channel count that is not a multiple of 16) compile to, instead of vector accesses
        "byte_accesses": len(re.findall(r"\b(?:ld|st)\.global(?:\.[a-zA-Z0-9:_]+)*\.[bsu]8\b", ptx)),
        # a negative constant `other` of a masked load: for int8 vector loads Triton packs it as
        # one sign-extended 32-bit word (bytes -128, -1, -1, -1 instead of four -128s), which gave
        # wrong padded values; the kernels use no negative constant `other` at all
        "sign_extended_load_other": bool(re.search(r"mov\.u32 %r\d+, 0xffffffffffffff[0-9a-f]{2};", ptx)),
        "registers": None,
        "spill_bytes": None,
    }
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cc.asm["cubin"])
            f.flush()
            out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", out)
        if m:
            entry["registers"], entry["spill_bytes"] = int(m.group(1)), int(m.group(2))
    return entry


def compile_only(all_configs: bool) -> Dict[str, Any]:
    """Compile every kernel for cuda:90 (one config each, or every autotune config)."""
    from kernels import conv, depthwise, dwproject, elementwise, gemm, lut, pool, stem

    if _config.INTERPRETED:
        raise SystemExit("--compile-only must run without TRITON_INTERPRET (in a fresh process)")
    i8, i32, f32 = torch.int8, torch.int32, torch.float32
    # per-channel multipliers and bounds (stride 1), as DFQ's equalized ReLU6 clips produce
    epi = dict(mult_ptr=f32, lo_ptr=i32, hi_ptr=i32, stride_mult=1, stride_lo=1, stride_hi=1, z_y=0)
    gemm_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, y_ptr=i8, M=0, N=0, K=0, stride_xm=0,
                   stride_wn=0, stride_ym=0, stride_wzp=0, M_BUCKET=0, **epi)  # fmt: skip
    conv_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, dig_ptr=i8, y_ptr=i8, B=0, H=0, W=0, C=0, OH=0,
                   OW=0, N=0, stride_h=0, stride_w=0, pad_top=0, pad_left=0, stride_wzp=0, z_x=0, M_BUCKET=0,
                   **epi)  # fmt: skip
    dw_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, y_ptr=i8, B=0, H=0, W=0, C=0, OH=0, OW=0,
                 stride_h=0, stride_w=0, pad_top=0, pad_left=0, stride_wzp=0, z_x=0, P_BUCKET=0, **epi)  # fmt: skip
    flags = dict(HAS_BIAS=True, OUT_INT32=False, USE_RINT=True)
    # the fused residual add (kernels.reference.ResidualAdd) of the GEMM and the convolution: off
    # but in the jobs marked "residual"
    res_rt = dict(r_ptr=i8, z_a=0, z_r=0, ia=0, ib=0, add_m=1.0, add_z=0, add_lo=0, add_hi=0)
    gemm_rt.update(res_rt, stride_rm=0)
    conv_rt.update(res_rt)
    gemm_flags = conv_flags = dict(flags, RESIDUAL=False)
    tma_rt = {k: v for k, v in gemm_rt.items() if k not in ("x_ptr", "w_ptr", "stride_xm", "stride_wn")}
    tma_rt.update(x_desc=TmaDesc(i8, ("BLOCK_M", "BLOCK_K")), w_desc=TmaDesc(i8, ("BLOCK_N", "BLOCK_K")),
                  NUM_PROGRAMS=0)
    gemm_cfgs = _config.GEMM_GPU_CONFIGS if all_configs else [_config.GEMM_GPU_CONFIGS[2]]  # 128x128x64, 4 warps
    dw_cfgs = _config.DEPTHWISE_GPU_CONFIGS if all_configs else [_config.DEPTHWISE_GPU_CONFIGS[0]]
    jobs = []
    for cfg in gemm_cfgs:
        for wzp in (False, True):
            jobs.append((f"gemm wzp={wzp}", gemm._int8_gemm_kernel, gemm_rt, dict(HAS_WZP=wzp, **gemm_flags),
                         ["N", "K", "stride_xm", "stride_wn", "stride_ym"], cfg))  # fmt: skip
        # the residual epilogue: a GEMM (ResNet-50's 1x1 projections) and a stepped 3x3 convolution
        # with the padding correction (ResNet-18/34 basic blocks)
        jobs.append(("gemm wzp=False residual", gemm._int8_gemm_kernel, gemm_rt,
                     dict(gemm_flags, HAS_WZP=False, RESIDUAL=True), ["N", "K", "stride_xm", "stride_wn", "stride_ym",
                                                                       "stride_rm"], cfg))  # fmt: skip
        # rows of K (in) and N (out) bytes with K and N not multiples of 16 (24, 40, ...): no
        # alignment hint, as at run time for an unpadded narrow layer (to_int8(pad_channels=True)
        # pads them)
        jobs.append(("gemm unaligned rows", gemm._int8_gemm_kernel, gemm_rt, dict(HAS_WZP=True, **gemm_flags), [],
                     cfg))
        # the "tma" variant (persistent grid, operands through TMA descriptors), on its own tiles
        for wzp, res in ((False, False), (True, True)) if cfg in _config.GEMM_TMA_CONFIGS else ():
            jobs.append((f"gemm tma wzp={wzp}" + (" residual" if res else ""), gemm._int8_gemm_tma_kernel, tma_rt,
                         dict(gemm_flags, HAS_WZP=wzp, RESIDUAL=res), ["N", "K", "stride_ym", "stride_rm"], cfg))
        jobs.append(("conv 3x3 flat=False even_k residual", conv._int8_conv2d_kernel, conv_rt,
                     dict(conv_flags, KH=3, KW=3, FLAT_K=False, EVEN_K=True, UNROLL_TAPS=False, PAD_CORR=True, NDIG=2,
                          TP=32, HAS_WZP=False, RESIDUAL=True), ["C", "N"], cfg))  # fmt: skip
        # the loop switches conv.py's heuristics set: EVEN_K (no channel mask: C a multiple of BLOCK_K)
        # and UNROLL_TAPS (taps unrolled, one channel loop each; else one stepped loop)
        for k, unroll, even in ((3, False, False), (3, False, True), (3, True, False), (3, True, True),
                                (1, True, True)):
            consts = dict(KH=k, KW=k, FLAT_K=False, EVEN_K=even, UNROLL_TAPS=unroll, PAD_CORR=k > 1, NDIG=2, TP=32,
                          HAS_WZP=False, **conv_flags)  # fmt: skip
            name = f"conv {k}x{k} flat=False" + (" unrolled" if unroll and k > 1 else "") + (" even_k" if even else "")
            jobs.append((name, conv._int8_conv2d_kernel, conv_rt, consts, ["C", "N"], cfg))
    # the TMA convolution (stride 1 or 2, C a multiple of 16), on the TMA tiles: 3x3 with 8-pixel
    # patch rows, padding correction; weight zero point and residual; stride 2 (four input phases)
    ctma_rt = {k: v for k, v in conv_rt.items() if k not in ("x_ptr", "w_ptr", "stride_h", "stride_w", "pad_top",
                                                               "pad_left")}
    box = TmaDesc(i8, (1, lambda c: c["BLOCK_M"] // c["BW"], "BW", "BLOCK_K"))
    ctma_rt.update(x00=box, x01=box, x10=box, x11=box, w_desc=TmaDesc(i8, ("BLOCK_N", "BLOCK_K")), NUM_PROGRAMS=0)
    # (stride 2 with several taps: without the tiles autotuning leaves out there, which spill)
    strided_ok = [c for c in _config.GEMM_TMA_CONFIGS
                  if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) not in _config.CONV_TMA_STRIDED_SPILLING]
    tma_cfgs = _config.GEMM_TMA_CONFIGS if all_configs else [_config.GEMM_GPU_CONFIGS[2]]
    strided_cfgs = strided_ok if all_configs else [_config.DEFAULT_GPU_CONFIG["gemm"]]
    conv_tma = ([(c, False, False, 1) for c in tma_cfgs] + [(c, True, True, 1) for c in tma_cfgs]
                + [(c, True, True, 2) for c in strided_cfgs])
    for cfg, wzp, res, stride in conv_tma:
        jobs.append((f"conv tma 3x3 wzp={wzp}" + (" residual" if res else "") + (" stride 2" if stride == 2 else ""),
                     conv._int8_conv2d_tma_kernel, ctma_rt,
                     dict(conv_flags, KH=3, KW=3, STRIDE=stride, PAD_TOP=1, PAD_LEFT=1, PAD_CORR=True, NDIG=2, TP=32,
                          HAS_WZP=wzp, RESIDUAL=res, BW=8), ["C", "N"], cfg))  # fmt: skip
    # the flat-K loop (C < 16: no divisibility-by-16 hint on C, as at run time) with its own tiles
    for cfg in _config.CONV_FLAT_K_CONFIGS if all_configs else [_config.DEFAULT_GPU_CONFIG["gemm"]]:
        consts = dict(KH=7, KW=7, FLAT_K=True, EVEN_K=False, UNROLL_TAPS=False, PAD_CORR=True, NDIG=2, TP=64,
                      HAS_WZP=False, **conv_flags)  # fmt: skip
        jobs.append(("conv 7x7 flat=True", conv._int8_conv2d_kernel, conv_rt, consts, ["N"], cfg))
    # depthwise: the accumulation each kernel launches with for 3x3/5x5 windows (rows: float32,
    # whose weights are float32 w - z_w; tiles: int32 on int32 w - z_w), and the other one
    rows_rt = {k: v for k, v in dw_rt.items() if k in depthwise._int8_depthwise_rows_kernel.arg_names}
    rows_cfgs = _config.DEPTHWISE_ROWS_GPU_CONFIGS if all_configs else [_config.DEFAULT_GPU_CONFIG["depthwise_rows"]]
    for cfg in rows_cfgs:
        for k in (3, 5):
            jobs.append((f"depthwise rows {k}x{k}", depthwise._int8_depthwise_rows_kernel, {**rows_rt, "w_ptr": f32},
                         dict(KH=k, KW=k, HAS_WZP=True, FLOAT_ACC=True, **flags), ["C"], cfg))  # fmt: skip
        jobs.append(("depthwise rows 3x3 int32 acc", depthwise._int8_depthwise_rows_kernel, rows_rt,
                     dict(KH=3, KW=3, HAS_WZP=True, FLOAT_ACC=False, **flags), ["C"], cfg))  # fmt: skip
    # the TMA variant: 3x3 and 5x5 windows on its own tiles, stride 1 (pipelined tap loop) and 2
    # (the input's four phases, taps unrolled)
    dwt_rt = {k: v for k, v in dw_rt.items() if k not in ("x_ptr", "stride_h", "stride_w", "pad_top", "pad_left")}
    box = TmaDesc(i8, (1, lambda c: c["BLOCK_P"] // c["BW"], "BW", "BLOCK_C"))
    dwt_rt.update(x00=box, x01=box, x10=box, x11=box, w_ptr=i32)
    dwt_cfgs = _config.DEPTHWISE_TMA_GPU_CONFIGS if all_configs else [_config.DEFAULT_GPU_CONFIG["depthwise_tma"]]
    for cfg in dwt_cfgs:
        strided_spills = (cfg.kwargs["BLOCK_P"], cfg.kwargs["BLOCK_C"],
                          cfg.num_warps) in _config.DEPTHWISE_TMA_STRIDED_SPILLING  # not tuned over there
        for k, stride in ((3, 1), (5, 1)) + (() if strided_spills else ((3, 2), (5, 2))):
            jobs.append((f"depthwise tma {k}x{k}" + (" stride 2" if stride == 2 else ""),
                         depthwise._int8_depthwise_tma_kernel, dwt_rt,
                         dict(KH=k, KW=k, STRIDE=stride, PAD_TOP=k // 2, PAD_LEFT=k // 2, HAS_WZP=True,
                              FLOAT_ACC=False, BW=8, **flags), ["C"], cfg))  # fmt: skip
    for cfg in dw_cfgs:
        jobs.append(("depthwise 3x3", depthwise._int8_depthwise_kernel, {**dw_rt, "w_ptr": i32},
                     dict(KH=3, KW=3, HAS_WZP=True, FLOAT_ACC=False, **flags), ["C"], cfg))  # fmt: skip
        jobs.append(("depthwise 5x5 float32 acc", depthwise._int8_depthwise_kernel, {**dw_rt, "w_ptr": f32},
                     dict(KH=5, KW=5, HAS_WZP=True, FLOAT_ACC=True, **flags), ["C"], cfg))  # fmt: skip
        mp_rt = {k: v for k, v in dw_rt.items() if k in pool._int8_maxpool_kernel.arg_names}
        jobs.append(("maxpool 3x3", pool._int8_maxpool_kernel, mp_rt, dict(KH=3, KW=3), ["C"], cfg))
        mpd_rt = {**mp_rt, "dil_h": 0, "dil_w": 0}
        jobs.append(("maxpool dilated 3x3", pool._int8_maxpool_dilated_kernel, mpd_rt, dict(KH=3, KW=3), ["C"], cfg))
        ap_rt = dict(x_ptr=i8, y_ptr=i8, mult_ptr=f32, B=0, H=0, W=0, C=0, OH=0, OW=0, stride_h=0, stride_w=0,
                     pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, z_x=0, z_y=0, lo=0, hi=0, P_BUCKET=0)
        jobs.append(("avgpool2d 3x3", pool._int8_avgpool2d_kernel, ap_rt,
                     dict(KH=3, KW=3, COUNT_INCLUDE_PAD=False, USE_RINT=True), ["C"], cfg))  # fmt: skip
    aap_rt = dict(x_ptr=i8, y_ptr=i8, mult_ptr=f32, B=0, H=0, W=0, C=0, OH=0, OW=0, KH_MAX=0, KW_MAX=0, z_x=0, z_y=0,
                  lo=0, hi=0, P_BUCKET=0)
    for cfg in _config.ADAPTIVE_POOL_GPU_CONFIGS if all_configs else [_config.ADAPTIVE_POOL_GPU_CONFIGS[0]]:
        jobs.append(("adaptive avgpool2d", pool._int8_adaptive_avgpool2d_kernel, aap_rt, dict(USE_RINT=True), ["C"],
                     cfg))
    # the depthwise + 1x1 kernel: its one tile, 3x3 and 5x5 windows, the widest project block, the
    # weight zero point and the residual epilogue on
    dwp_rt = dict(x_ptr=i8, dw_ptr=i32, dbias_ptr=i32, dmult_ptr=f32, dlo_ptr=i32, dhi_ptr=i32, pw_ptr=i8,
                  pbias_ptr=i32, pwzp_ptr=i32, pmult_ptr=f32, plo_ptr=i32, phi_ptr=i32, y_ptr=i8, r_ptr=i8, M=0, H=0,
                  W=0, E=0, OH=0, OW=0, N=0, stride_h=0, stride_w=0, pad_top=0, pad_left=0, stride_dmult=1,
                  stride_dlo=1, stride_dhi=1, stride_pwzp=1, stride_pmult=1, stride_plo=1, stride_phi=1, z_x=0, z_d=0,
                  z_y=0, **{k: v for k, v in res_rt.items() if k != "r_ptr"})  # fmt: skip
    for k in (3, 5):
        jobs.append((f"dwproject {k}x{k} residual", dwproject._int8_dw_project_kernel, dwp_rt,
                     dict(KH=k, KW=k, HAS_DBIAS=True, HAS_BIAS=True, HAS_WZP=True, OUT_INT32=False, RESIDUAL=True,
                          USE_RINT=True, BLOCK_N=dwproject.DWPROJECT_MAX_BLOCK_N, **dwproject.DWPROJECT_GPU_META),
                     ["E", "N"], triton.Config({}, num_warps=dwproject.DWPROJECT_GPU_WARPS,
                                               num_stages=dwproject.DWPROJECT_GPU_STAGES)))  # fmt: skip
    single = triton.Config({}, num_warps=_config.ELEMENTWISE_GPU_WARPS, num_stages=1)
    block = dict(BLOCK=_config.ELEMENTWISE_GPU_BLOCK)
    jobs += [
        ("add", elementwise._int8_add_kernel, dict(a_ptr=i8, b_ptr=i8, y_ptr=i8, n_elements=0, z_a=0, z_b=0, ia=0,
         ib=0, m=1.0, z_y=0, lo=0, hi=0), dict(USE_RINT=True, **block), [], single),
        ("quantize nchw", elementwise._quantize_kernel, dict(x_ptr=f32, y_ptr=i8, n_elements=0, C=0, H=0, W=0,
         stride_b=0, stride_c=0, stride_h=0, stride_w=0, inv_scale=1.0, z=0, lo=0, hi=0),
         dict(GATHER=True, USE_RINT=True, **block), [], single),
        ("quantize im2col 7x7 rgb", stem._quantize_im2col_kernel, dict(x_ptr=f32, a_ptr=i8, M=0, H=0, W=0, OH=0,
         OW=0, stride_b=0, stride_c=0, stride_h=0, stride_w=0, conv_sh=0, conv_sw=0, pad_top=0, pad_left=0,
         inv_scale=1.0, z=0, lo=0, hi=0), dict(C=3, KH=7, KW=7, KP=160, USE_RINT=True, **stem.IM2COL_GPU_META), [],
         triton.Config({}, num_warps=stem.IM2COL_GPU_WARPS, num_stages=1)),
        ("dequantize", elementwise._dequantize_kernel, dict(q_ptr=i8, y_ptr=f32, n_elements=0, scale=1.0, z=0),
         block, [], single),
        ("lut into slice", lut._int8_lut_kernel, dict(x_ptr=i8, table_ptr=i8, y_ptr=i8, n_elements=0, C=0, C_out=0,
         channel_offset=0), dict(SLICE=True, PER_CHANNEL=False, **block), [], single),
        ("lut per channel", lut._int8_lut_kernel, dict(x_ptr=i8, table_ptr=i8, y_ptr=i8, n_elements=0, C=0,
         C_out=0, channel_offset=0), dict(SLICE=False, PER_CHANNEL=True, **block), [], single),
        ("mul gate", elementwise._int8_mul_kernel, dict(x_ptr=i8, g_ptr=i8, y_ptr=i8, n_elements=0, HWC=0, C=0,
         z_x=0, z_g=0, m=1.0, z_y=0, lo=0, hi=0), dict(PER_CHANNEL=True, USE_RINT=True, **block), [], single),
        ("upsample bilinear", pool._int8_upsample_bilinear_kernel, dict(x_ptr=i8, y_ptr=i8, th_ptr=i32, tw_ptr=i32,
         n_elements=0, H=0, W=0, C=0, OH=0, OW=0, z_x=0, m=1.0, z_y=0, lo=0, hi=0),
         dict(ONE=256, USE_RINT=True, **block), [], single),
        ("upsample nearest", pool._int8_upsample_nearest_kernel, dict(x_ptr=i8, y_ptr=i8, n_elements=0, H=0, W=0,
         C=0, OH=0, OW=0, mode_h=0, scale_h=1.0, mode_w=0, scale_w=1.0), block, [], single),
        ("avgpool", pool._int8_avgpool_kernel, dict(x_ptr=i8, y_ptr=i8, mult_ptr=f32, lo_ptr=i32, hi_ptr=i32, HW=0,
         C=0, stride_mult=0, stride_lo=0, stride_hi=0, z_x=0, z_y=0), dict(USE_RINT=True, **_config.AVGPOOL_GPU_META),
         ["C"], triton.Config({}, num_warps=_config.AVGPOOL_GPU_WARPS, num_stages=1)),
    ]  # fmt: skip
    results = []
    for name, fn, rt, consts, div16, cfg in jobs:
        consts = {**consts, **cfg.kwargs}
        entry = {"kernel": name, "config": dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)}
        try:
            entry.update(_compile_sm90(fn, rt, consts, div16, cfg.num_warps, cfg.num_stages), ok=True)
        except Exception as exc:  # report every failure, keep compiling the rest
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
        results.append(entry)
        print(f"{name:22s} {str(entry['config']):100s} ok={entry['ok']} wgmma={entry.get('wgmma')} "
              f"shared={entry.get('shared_bytes')} regs={entry.get('registers')} spill={entry.get('spill_bytes')} "
              f"fma={entry.get('fp32_fma')} rint={entry.get('rint')} byte_accesses={entry.get('byte_accesses')}")
    return {
        "schema": COMPILE_SCHEMA,
        "mode": "compile-only",
        "target": "cuda:90",
        "triton": triton.__version__,
        "all_ok": all(r["ok"] for r in results),
        "results": results,
    }
