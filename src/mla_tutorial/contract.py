"""The paged-attention contract: what a paged MLA decode call takes, what it promises, and who checks it.

Stage 3's `paged_mla_attention`, the stage-4 Triton kernels (every `mla_decode_vN` and the FlashMLA-compatible
`flash_mla_with_kvcache`) and stage 4's module all take FlashMLA's arguments:

    q             [b, s_q, h_q, d]            latent queries: d = 576 = 512 latent ("nope") + 64 RoPE columns
    k_cache       [num_blocks, page, h_kv, d] the page pool; V is the first head_dim_v (512) columns of each row
    block_table   [b, max_blocks] int32       row i lists request i's pages in order; entries past its last page
                                              may hold anything (SENTINEL_BLOCK by convention) and are never read
    cache_seqlens [b] int32                   keys of request i: rows 0 … cache_seqlens[i] − 1 of its pages
    head_dim_v    int                         512
    softmax_scale float or None               None: d^-½ (FlashMLA's default, not DeepSeek's: pass the model's)
    causal        bool                        with s_q > 1, query j sees keys 0 … s_k − s_q + j (bottom-right)

and return out [b, s_q, h_q, head_dim_v] and lse [b, h_q, s_q] (natural log; out = 0 and lse = +inf for a
query row that sees no key). The rules, stated once here and enforced by one function, `validate_paged_decode`:

- types and shapes: every argument has the type, rank, dtype and device above; q and k_cache share dtype,
  device and row width d; h_kv divides h_q; block_table and cache_seqlens are int32 (FlashMLA's index type);
- strides: torch code honours any strides; the kernels read the last dimension of q, k_cache and block_table
  with unit stride and cache_seqlens as a dense vector, so they refuse anything else (with the stride in the
  message) rather than read the wrong elements;
- bounds: every length is ≥ 0 and fits the table (⌈len / page⌉ ≤ max_blocks), and every block id that a
  request's length covers is in [0, num_blocks). On the CPU this is checked on the host before anything runs
  (the error names the entry); on a GPU it is enqueued as a device-side assertion
  (`check_block_table_on_device`), so checking never waits for the GPU;
- kernel geometry (`kernel=True`): d = 576, page = 64, head_dim_v = 512, bf16/fp16, tensors on a CUDA device
  (or on the CPU under Triton's interpreter, `TRITON_INTERPRET=1`). Stage 3 (`kernel=False`) is the general
  case: any floating dtype, any page size and row width, head_dim_v ≤ d, any device.

Who enforces it: `stage3_paged.paged_mla_attention` calls `validate_paged_decode(..., kernel=False)`; the kernel
API and every kernel version call it with `kernel=True` (through `kernels.common.validate_decode_inputs`);
stage 4 (`TritonMLA`) goes through the kernel API. The one reference implementation of the contract is
`paged_mla_attention` itself (fp32, fp64 for fp64 inputs); the one generator of hostile inputs for it is
`mla_tutorial.testing.make_paged_inputs`.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch

# ------------------------------------------------------------------------------------------------- constants
PAGE_SIZE = 64  # tokens per cache page (FlashMLA's block size)
SENTINEL_BLOCK = 2**31 - 1  # block-table filler past a request's last page: far outside any pool, never read
D_NOPE = 512  # kv_lora_rank: the latent part of a cache row, also V
D_ROPE = 64  # qk_rope_head_dim: the decoupled RoPE part
D_QK = D_NOPE + D_ROPE  # 576: one cache row, and the width of a latent query
KERNEL_DTYPES = (torch.bfloat16, torch.float16)  # what the Triton kernels (and FlashMLA) take


def is_interpreter() -> bool:
    """True when Triton runs kernels in its numpy interpreter (``TRITON_INTERPRET=1``): CPU tensors allowed."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DecodeDims:
    """Sizes read off validated inputs."""

    batch: int  # b
    s_q: int  # query tokens per request (1 for plain decode, >1 for speculative/MTP decode)
    h_q: int  # query heads
    h_kv: int  # latent KV heads (1 for DeepSeek MLA)
    heads_per_kv: int  # h_q // h_kv
    rows_per_kv: int  # s_q * h_q // h_kv: the M dimension of the kernels' head tile
    num_blocks: int  # pages in the cache
    max_blocks: int  # block-table columns
    head_dim_v: int  # 512 for the kernels
    scale: float  # softmax scale
    page_size: int = PAGE_SIZE  # tokens per page (64 for the kernels)
    head_dim: int = D_QK  # d: width of a query and of a cache row (576 for the kernels)


# ------------------------------------------------------------------------------------------------- helpers
def describe(x: object) -> str:
    """A short description of a received value, for error messages."""
    if isinstance(x, torch.Tensor):
        return f"tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    text = repr(x)
    return f"{type(x).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def check_tensor(name: str, t: object, ndim: int, dtypes: tuple[torch.dtype, ...], what: str) -> None:
    """TypeError/ValueError unless t is a tensor of `ndim` dims with a dtype in `dtypes`; `what` says the layout."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ({what}), got {describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims ({what}), got {t.dim()} dims: shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}, got {t.dtype}")


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; all tensors must be on one device")


def check_contiguous(name: str, t: torch.Tensor) -> None:
    """ValueError unless t is dense in memory (what a kernel reading `ptr + i` assumes); size-1 dims are free."""
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got stride {tuple(t.stride())} for shape {tuple(t.shape)}; "
                         f"pass {name}.contiguous()")


def check_unit_last_stride(name: str, t: torch.Tensor) -> None:
    """ValueError unless t's last dim has stride 1 (the kernels take every other stride as an argument)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 in its last dim, got stride {tuple(t.stride())} for shape "
                         f"{tuple(t.shape)}; pass {name}.contiguous()")


def _int32_index(name: str, t: object, ndim: int, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {what}, got {describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {what}, got shape {list(t.shape)}")
    if t.dtype != torch.int32:
        hint = f"; convert with {name}.int()" if t.dtype in (torch.int64, torch.int16, torch.int8, torch.uint8) else ""
        raise TypeError(f"{name} must be int32 (FlashMLA's index type), got {t.dtype}{hint}")
    return t


# ------------------------------------------------------------------------------------------------- bounds
def check_block_table_on_host(block_table: torch.Tensor, cache_seqlens: torch.Tensor, num_blocks: int,
                              page_size: int) -> None:
    """ValueError naming the first bad entry: a negative length, a length past the table, or a block id that a
    request's length covers lying outside [0, num_blocks). Reads the values (a host sync on a GPU: CPU only)."""
    lengths = cache_seqlens.long()  # [b]
    negative = (lengths < 0).nonzero()
    if negative.numel():
        i = int(negative[0, 0])
        raise ValueError(f"cache_seqlens must be ≥ 0, got cache_seqlens[{i}] = {int(lengths[i])}")
    width = block_table.shape[1]
    pages = (lengths + page_size - 1) // page_size  # [b] pages each request's keys cover
    too_long = (pages > width).nonzero()
    if too_long.numel():
        i = int(too_long[0, 0])
        raise ValueError(f"block_table has {width} columns but a sequence of {int(lengths[i])} tokens needs "
                         f"{int(pages[i])} pages of {page_size} (cache_seqlens[{i}] = {int(lengths[i])})")
    if width == 0:
        return
    live = torch.arange(width, device=lengths.device)[None, :] < pages[:, None]  # [b, width]
    ids = block_table.long()
    bad = (live & ((ids < 0) | (ids >= num_blocks))).nonzero()
    if bad.numel():
        i, j = int(bad[0, 0]), int(bad[0, 1])
        raise ValueError(f"block_table[{i}, {j}] = {int(ids[i, j])} is out of range for a pool of {num_blocks} "
                         f"blocks (cache_seqlens[{i}] = {int(lengths[i])} covers columns 0..{int(pages[i]) - 1})")


def check_block_table_on_device(block_table: torch.Tensor, cache_seqlens: torch.Tensor, num_blocks: int,
                                page_size: int) -> None:
    """Enqueue the bounds check of `check_block_table_on_host` as one device-side assertion: no host sync, and it
    can be captured in a CUDA graph. A failure surfaces at the next synchronisation as CUDA's "device-side assert
    triggered" and leaves the CUDA context unusable (restart the process): the price of never waiting for the GPU.
    Re-run the same call on CPU copies of block_table and cache_seqlens to learn which entry is bad.

    On the CPU, torch runs the assertion at once and raises RuntimeError (use the host check for a message).
    """
    lengths = cache_seqlens.long()  # [b]
    width = block_table.shape[1]
    pages = (lengths + page_size - 1) // page_size  # [b]
    ok = (lengths >= 0).all() & (pages <= width).all()
    if width:
        live = torch.arange(width, device=lengths.device)[None, :] < pages[:, None]  # [b, width]
        ids = block_table.long()
        ok = ok & ~(live & ((ids < 0) | (ids >= num_blocks))).any()
    torch._assert_async(ok, "paged decode: a block id covered by cache_seqlens is outside the pool, a length is "
                            "negative, or a length needs more pages than block_table has columns")


# ------------------------------------------------------------------------------------------------- validator
def validate_paged_decode(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale=None, causal=False,
                          *, dtypes: tuple[torch.dtype, ...] | None = None, kernel: bool = False,
                          check_values: bool = True, fp8_cache: bool = False) -> DecodeDims:
    """Check every argument of a paged decode call against the contract; return the sizes. Never launches.

    kernel=False (stage 3's torch attention): q [b, s_q, h_q, d] of any floating dtype (or one of `dtypes`),
        k_cache [num_blocks, page, (h_kv,) d] (3 dims mean h_kv = 1), any page size, 1 ≤ head_dim_v ≤ d.
    kernel=True (the Triton kernels): d = 576, page = 64, head_dim_v = 512, dtype in `dtypes` (default bf16 or
        fp16), k_cache with 4 dims, tensors on a CUDA device (or the CPU under Triton's interpreter); unit stride in
        the last dim of q, k_cache and block_table, and a contiguous cache_seqlens.
    check_values=True: the bounds of block_table and cache_seqlens, on the host for CPU tensors (ValueError naming
        the entry), as a device-side assertion for CUDA tensors (no host sync); a kernel that checks bounds
        itself passes False.
    fp8_cache=True (kernel only, FlashMLA's is_fp8_kvcache): k_cache is the FP8 cache, float8_e4m3fn
        [num_blocks, 64, h_kv, 656] in FlashMLA's layout (`mla_tutorial.fp8.validate_fp8_k_cache`), q bf16.

    Raises TypeError (wrong type or dtype) or ValueError (shape, device, stride, value), naming the argument, what
    was expected and what was received.
    """
    dtypes = (KERNEL_DTYPES if kernel else None) if dtypes is None else tuple(dtypes)
    # ---- q
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {describe(q)}; expected [batch, s_q, h_q, head_dim]")
    if q.dim() != 4:
        raise ValueError(f"q must be [batch, s_q, h_q, head_dim] (4 dims), got shape {list(q.shape)}")
    if dtypes is None:
        if not q.dtype.is_floating_point:
            raise TypeError(f"q must have a floating-point dtype, got {q.dtype}")
    elif q.dtype not in dtypes:
        raise TypeError(f"q must have dtype {' or '.join(str(d) for d in dtypes)}, got {q.dtype}")
    b, s_q, h_q, d = q.shape
    if b < 1 or s_q < 1 or h_q < 1 or d < 1:
        raise ValueError(f"q must have batch, s_q, h_q and head_dim ≥ 1, got shape {list(q.shape)}")
    if kernel and d != D_QK:
        raise ValueError(f"q.shape[3] (head dim) must be {D_QK} ({D_NOPE} latent + {D_ROPE} RoPE), got {d}")
    device = q.device
    if kernel:
        check_unit_last_stride("q", q)
        if device.type != "cuda" and not (device.type == "cpu" and is_interpreter()):
            raise ValueError(f"q must be on a CUDA device (or on the CPU with TRITON_INTERPRET=1), got {device}")

    # ---- k_cache
    if not isinstance(fp8_cache, bool):
        raise TypeError(f"is_fp8_kvcache must be a bool, got {describe(fp8_cache)}")
    if fp8_cache and not kernel:
        raise ValueError("an FP8 cache (is_fp8_kvcache=True) is read by the kernels only; dequantize it "
                         "(mla_tutorial.dequantize_k_cache) for stage 3's torch attention")
    if fp8_cache:
        from .fp8 import validate_fp8_k_cache

        validate_fp8_k_cache(k_cache, q)
    elif isinstance(k_cache, torch.Tensor) and k_cache.dtype == torch.float8_e4m3fn:
        raise TypeError("k_cache has dtype torch.float8_e4m3fn: pass is_fp8_kvcache=True for FlashMLA's FP8 cache")
    if not isinstance(k_cache, torch.Tensor):
        raise TypeError(f"k_cache must be a torch.Tensor, got {describe(k_cache)}; expected "
                        f"[num_blocks, page_size, h_kv, {d}]")
    if not fp8_cache and (k_cache.dim() not in ((4,) if kernel else (3, 4)) or k_cache.shape[-1] != d):
        layout = f"[num_blocks, {PAGE_SIZE}, h_kv, {d}]" if kernel else f"[num_blocks, page_size, (h_kv,) {d}]"
        raise ValueError(f"k_cache must be {layout} (row width {d}, like q), got shape {list(k_cache.shape)}")
    if not fp8_cache and k_cache.dtype != q.dtype:
        raise TypeError(f"k_cache dtype {k_cache.dtype} differs from q dtype {q.dtype}; they must match")
    check_device("k_cache", k_cache, device)
    num_blocks, page = k_cache.shape[0], k_cache.shape[1]
    h_kv = k_cache.shape[2] if k_cache.dim() == 4 else 1
    if num_blocks < 1 or page < 1:
        raise ValueError(f"k_cache must hold at least one page of at least one row, got shape {list(k_cache.shape)}")
    if kernel and page != PAGE_SIZE:
        raise ValueError(f"k_cache.shape[1] (page size) must be {PAGE_SIZE}, got {page}")
    if h_kv < 1 or h_q % h_kv:
        raise ValueError(f"h_q (q.shape[2] = {h_q}) must be divisible by h_kv (k_cache.shape[2] = {h_kv})")
    if kernel:
        check_unit_last_stride("k_cache", k_cache)

    # ---- block_table and cache_seqlens
    _int32_index("block_table", block_table, 2, f"[batch={b}, max_blocks] int32")
    if block_table.shape[0] != b:
        raise ValueError(f"block_table must be [batch={b}, max_blocks], got shape {list(block_table.shape)}")
    check_device("block_table", block_table, device)
    if kernel:
        if block_table.shape[1] < 1:
            raise ValueError(f"block_table must have at least 1 column, got shape {list(block_table.shape)}")
        check_unit_last_stride("block_table", block_table)
    _int32_index("cache_seqlens", cache_seqlens, 1, f"[batch={b}] int32")
    if cache_seqlens.shape[0] != b:
        raise ValueError(f"cache_seqlens must be [batch={b}], got shape {list(cache_seqlens.shape)}")
    check_device("cache_seqlens", cache_seqlens, device)
    if kernel:
        check_contiguous("cache_seqlens", cache_seqlens)

    # ---- scalars
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, numbers.Integral):
        raise TypeError(f"head_dim_v must be an int, got {describe(head_dim_v)}")
    head_dim_v = int(head_dim_v)
    if kernel and head_dim_v != D_NOPE:
        raise ValueError(f"head_dim_v must be {D_NOPE} (V = the latent part of the cache row), got {head_dim_v}")
    if not 0 < head_dim_v <= d:
        raise ValueError(f"head_dim_v must be in 1..{d}, got {head_dim_v} (V is the first head_dim_v columns of "
                         f"a cache row)")
    if softmax_scale is None:
        scale = d**-0.5
    else:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
            raise TypeError(f"softmax_scale must be a float or None, got {describe(softmax_scale)}")
        scale = float(softmax_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"softmax_scale must be a finite positive number, got {softmax_scale}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {describe(causal)}")

    # ---- values
    if check_values:
        if device.type == "cpu":
            check_block_table_on_host(block_table, cache_seqlens, num_blocks, page)
        elif device.type != "meta":  # meta tensors hold no values
            check_block_table_on_device(block_table, cache_seqlens, num_blocks, page)

    return DecodeDims(batch=b, s_q=s_q, h_q=h_q, h_kv=h_kv, heads_per_kv=h_q // h_kv, rows_per_kv=s_q * (h_q // h_kv),
                      num_blocks=num_blocks, max_blocks=block_table.shape[1], head_dim_v=head_dim_v, scale=scale,
                      page_size=page, head_dim=d)


__all__ = [
    "PAGE_SIZE", "SENTINEL_BLOCK", "D_NOPE", "D_ROPE", "D_QK", "KERNEL_DTYPES", "DecodeDims", "is_interpreter",
    "validate_paged_decode", "check_block_table_on_host", "check_block_table_on_device", "check_tensor",
    "check_device", "check_contiguous", "check_unit_last_stride", "describe",
]
