# combine kernel (used by v3 and v4): merge the fp32 partial results of a split request.
#
# Split i of a request produced o_i = Σ_j p_ij·v_j / l_i and lse_i = log(l_i) (natural log, with the
# running max folded in). The full result is
#   lse = log Σ_i exp(lse_i),   o = Σ_i exp(lse_i − lse) · o_i
# computed here in one pass with a running max, so no split's weight overflows.
# Requests with a single split were already written by the main kernel and are skipped.
# On a GPU it is launched with programmatic dependent launch (PDL, sm_90): its programs are scheduled while the
# main kernel finishes and wait at `gdc_wait` until the main kernel's writes are visible, so the launch gap
# between the two kernels disappears. (The interpreter has no PDL: the constexpr keeps it out there.)
# Bytes: reads n_splits·(512·4 + 4) B and writes 512·2 + 4 B per query row: for h_q=128, b=128 and
#   2 splits, ~70 MB, ~25 µs at 3 TB/s: small next to the main kernel, but not free at small s_k.
"""Combine kernel: merges split-KV partial outputs by their log-sum-exp."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from .blocks import _cast
from .common import is_interpreter
from .launch import FastLauncher

COMBINE_ROWS = 8  # query rows per combine program


@triton.jit
def _combine_kernel(
    part_out_ptr,  # [slots, s_q*h_q, 512] fp32
    part_lse_ptr,  # [slots, s_q*h_q] fp32 (-inf: the split saw no key)
    split_offsets_ptr,  # [b + 1] int32: request r owns slots [split_offsets[r], split_offsets[r+1])
    out_ptr,  # [b, s_q, h_q, 512] in q's dtype
    lse_ptr,  # [b, h_q, s_q] fp32
    s_q, h_q,
    ROWS: tl.constexpr, D: tl.constexpr, UPCAST: tl.constexpr, USE_PDL: tl.constexpr,
):
    if USE_PDL:
        gdc_wait()  # the main kernel's partials and outputs are visible after this
    req = tl.program_id(0)
    begin = tl.load(split_offsets_ptr + req)
    end = tl.load(split_offsets_ptr + req + 1)
    if end - begin > 1:  # unsplit requests were written by the main kernel
        n_rows = s_q * h_q
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)  # (ROWS,) row = token * h_q + head
        row_ok = rows < n_rows
        offs_d = tl.arange(0, D)
        m = tl.full([ROWS], float("-inf"), tl.float32)  # running max of lse_i
        w_sum = tl.zeros([ROWS], tl.float32)  # Σ exp(lse_i - m)
        acc = tl.zeros([ROWS, D], tl.float32)  # Σ exp(lse_i - m) · o_i
        for slot in range(begin, end):
            base = rows.to(tl.int64) + slot * n_rows  # (ROWS,) int64
            lse_i = tl.load(part_lse_ptr + base, mask=row_ok, other=float("-inf"))
            o_i = tl.load(part_out_ptr + base[:, None] * D + offs_d[None, :], mask=row_ok[:, None], other=0.0)
            m_new = tl.maximum(m, lse_i)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_use)
            w = tl.exp(lse_i - m_use)
            w_sum = w_sum * alpha + w
            acc = acc * alpha[:, None] + o_i * w[:, None]
            m = m_new
        has_keys = w_sum > 0
        w_safe = tl.where(has_keys, w_sum, 1.0)
        o = acc / w_safe[:, None]
        lse = tl.where(has_keys, m + tl.log(w_safe), float("inf"))
        out_rows = req.to(tl.int64) * n_rows + rows
        tl.store(out_ptr + out_rows[:, None] * D + offs_d[None, :], _cast(o, out_ptr.dtype.element_ty, UPCAST),
                 mask=row_ok[:, None])
        tok = rows // h_q
        head = rows % h_q
        tl.store(lse_ptr + (req.to(tl.int64) * h_q + head) * s_q + tok, lse, mask=row_ok)


def combine_splits(
    part_out: torch.Tensor,
    part_lse: torch.Tensor,
    split_offsets: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
) -> None:
    """Merge partials into out [b, s_q, h_q, 512] and lse [b, h_q, s_q] for requests with > 1 split."""
    b, s_q, h_q, d = out.shape
    grid = (b, triton.cdiv(s_q * h_q, COMBINE_ROWS))
    interpret = is_interpreter()
    pdl = {} if interpret else {"launch_pdl": _pdl_supported(out.device)}
    _LAUNCH(grid, part_out, part_lse, split_offsets, out, lse, s_q, h_q, ROWS=COMBINE_ROWS, D=d,
            UPCAST=interpret, USE_PDL=bool(pdl.get("launch_pdl")), num_warps=4, **pdl)


def _pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch needs sm_90 or newer."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _PDL:
        _PDL[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _PDL[index]


_PDL: dict[int, bool] = {}


_LAUNCH = FastLauncher(_combine_kernel)
