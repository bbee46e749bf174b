"""int8 table lookup (Triton): ``y = table[x + 128]``, optionally into a channel slice of a buffer.

Layout follows Triton's tutorials: block sizes, the ``@triton.jit`` kernel, a thin launcher, and a
reference check (``python -m kernels.lut``).

* :func:`int8_lut`: every activation without an integer form (hardswish, SiLU, sigmoid, ...) and
  every requantization from one scale to another is a 256-entry int8 table, built by the caller
  with :func:`kernels.reference.lut_from_function`; a per-channel function (a batch norm left in
  the network, a per-channel constant factor) is a ``[C, 256]`` table, one row per channel of the
  NHWC input. With ``out`` the result lands in channels
  ``[channel_offset, channel_offset + C)`` of an NHWC buffer, which is how a channel
  concatenation is assembled without a copy.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import ELEMENTWISE_GPU_BLOCK, ELEMENTWISE_GPU_WARPS, ELEMENTWISE_INTERPRET_BLOCK, INTERPRETED, cdiv

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit
def _int8_lut_kernel(
    x_ptr, table_ptr, y_ptr,  # int8 input (contiguous), int8 [256] or [C, 256] table, int8 output
    n_elements,
    C, C_out, channel_offset,  # x is [..., C]; SLICE: y is [..., C_out], written at channel_offset
    SLICE: tl.constexpr, PER_CHANNEL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int32)
    # gather from the table (256 bytes, or 256 per channel; cache resident); x + 128 lies in [0, 255]
    idx = x + 128
    if PER_CHANNEL:
        idx = (offs % C).to(tl.int32) * 256 + idx  # channel c's row
    y = tl.load(table_ptr + idx, mask=mask, other=0)
    if SLICE:
        dst = (offs // C) * C_out + channel_offset + offs % C
    else:
        dst = offs
    tl.store(y_ptr + dst, y, mask=mask)


# =============================================================================================
# Launcher
# =============================================================================================
def int8_lut(x: Tensor, table: Tensor, out: Optional[Tensor] = None, channel_offset: int = 0) -> Tensor:
    """Triton table lookup; same contract as :func:`kernels.reference.int8_lut`."""
    offset = ref.check_lut_args(x, table, out, channel_offset)
    per_channel = table.dim() == 2
    C = x.shape[-1] if x.dim() else 1
    if out is None:
        y = torch.empty_like(x)
        C_out = C
    else:
        y = out
        C_out = out.shape[3]
    n = x.numel()
    if n == 0:
        return y
    block = ELEMENTWISE_INTERPRET_BLOCK if INTERPRETED else ELEMENTWISE_GPU_BLOCK
    opts = {} if INTERPRETED else {"num_warps": ELEMENTWISE_GPU_WARPS}
    _int8_lut_kernel[(cdiv(n, block),)](
        x, table, y, n, C, C_out, offset, SLICE=out is not None, PER_CHANNEL=per_channel, BLOCK=block, **opts
    )  # fmt: skip
    return y


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare the lookup (plain and into a channel slice) with the reference."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (2, 7, 5, 37), generator=g, dtype=torch.int8).to(device)
    table = ref.lut_from_function(torch.nn.functional.hardswish, 0.05, -3, 0.03, -20, device=device)
    ok = torch.equal(int8_lut(x, table), ref.int8_lut(x, table))
    buf = torch.zeros((2, 7, 5, 50), dtype=torch.int8, device=device)
    expect = ref.int8_lut(x, table, buf.clone(), 9)
    ok &= torch.equal(int8_lut(x, table, buf, 9), expect)
    per_channel = torch.randint(-128, 128, (37, 256), generator=g, dtype=torch.int8).to(device)
    ok &= torch.equal(int8_lut(x, per_channel), ref.int8_lut(x, per_channel))
    logger.info("lut reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
