"""Helpers and exercise solutions for notebooks 05 (the kernel), 06 (profiling) and 07 (the FP8 cache).

Every exercise in those notebooks has an answer cell whose default calls the solution here, and a check cell that
asserts the answer: the notebooks run top to bottom (and under nbval), and a learner who replaces the call with
their own code is told whether it is right. The helpers are what the notebooks need besides the stages themselves:
reading the schedule's metadata as pieces of work, the partial results a split request produces, the FP8 row's
fields. Nothing here is a second implementation of a stage: the attention is always stage 3's
`paged_mla_attention`, the schedule `get_mla_metadata`, the FP8 row `mla_tutorial.fp8`, the cost model
`mla_tutorial.measure.cost`.

Notebook 05 (the kernel):    head_tiles, schedule_pieces, pieces_per_request, piece_partials, combine_partials,
                             check_like_flashmla
Notebook 06 (profiling):     step_floor_ms, usd_per_million_tokens, sequences_per_gpu
Notebook 07 (the FP8 cache): fp8_fields, latent_rows, scale_by_hand, read_fields, fp8_ms_if_as_efficient,
                             fp8_error_split
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import MLAConfig
from ..contract import D_NOPE, D_QK, PAGE_SIZE
from ..metrics import ErrorMetrics, error_metrics
from ..stage3_paged import paged_mla_attention


# ============================================================================================= 05: the head tile
@dataclass(frozen=True)
class HeadTiles:
    """How the query rows of one request and one latent KV head are tiled (kernel v2 onwards)."""

    h_q: int
    s_q: int
    h_kv: int
    rows_per_kv: int  # s_q·h_q/h_kv query rows read the same latent rows
    block_m: int  # rows per tile: next power of two of rows_per_kv, between 16 and 64
    tiles: int  # tiles per (request, KV head): each one reads every page of the request once

    def rows_of(self, tile: int) -> list[tuple[int, int]]:
        """(query token, query head) of each row of `tile` (KV head 0): row r is token r // g, head r % g,
        g = h_q / h_kv, as the kernels stack them; rows past rows_per_kv are padding (masked)."""
        if not 0 <= tile < self.tiles:
            raise ValueError(f"tile must be in [0, {self.tiles}), got {tile}")
        group = self.h_q // self.h_kv
        first = tile * self.block_m
        return [(r // group, r % group) for r in range(first, min(first + self.block_m, self.rows_per_kv))]

    @property
    def page_reads_v1(self) -> int:
        """Times v1 reads each page: once per (query token, head), i.e. per query row."""
        return self.rows_per_kv

    @property
    def page_reads(self) -> int:
        """Times v2 onwards read each page (per KV head): once per tile."""
        return self.tiles


def head_tiles(h_q: int, s_q: int = 1, h_kv: int = 1) -> HeadTiles:
    """Exercise (05): the head tile of h_q query heads and s_q new tokens per request over h_kv latent heads."""
    for name, value in (("h_q", h_q), ("s_q", s_q), ("h_kv", h_kv)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if h_q % h_kv:
        raise ValueError(f"h_q ({h_q}) must be a multiple of h_kv ({h_kv})")
    from ..kernels.common import cdiv, tile_block_m

    rows = s_q * h_q // h_kv
    block_m = tile_block_m(rows)  # the next power of two, at least 16 (one MMA), at most 64 (one wgmma tile)
    return HeadTiles(h_q, s_q, h_kv, rows, block_m, cdiv(rows, block_m))


# ============================================================================================= 05: the schedule
@dataclass(frozen=True)
class Piece:
    """A contiguous range of one request's pages, handled by one SM part (one program of the kernel's wave)."""

    part: int  # row of tile_scheduler_metadata
    request: int
    split: int  # index of this piece among its request's pieces (where its partial result goes)
    first_page: int
    end_page: int  # exclusive; an empty request is one piece [0, 1) with no keys
    s_k: int  # the request's length

    @property
    def keys(self) -> tuple[int, int]:
        """The key positions [lo, hi) of this piece."""
        return min(self.first_page * PAGE_SIZE, self.s_k), min(self.end_page * PAGE_SIZE, self.s_k)

    @property
    def pages(self) -> int:
        """Pages holding keys of this piece (0 for an empty request)."""
        lo, hi = self.keys
        return -(-hi // PAGE_SIZE) - lo // PAGE_SIZE if hi > lo else 0

    @property
    def starts_request(self) -> bool:
        return self.first_page == 0


def schedule_pieces(tile_scheduler_metadata: torch.Tensor, num_splits: torch.Tensor,
                    cache_seqlens: torch.Tensor | Sequence[int]) -> list[Piece]:
    """Read `get_mla_metadata`'s output the way the kernel walks it: the pieces of every SM part, in order.

    Row p = [begin request, its first page, end request, its end page (exclusive), split index of the first
    piece, 0, 0, 0]: part p runs from (begin request, first page) to (end request, end page); every request in
    between is whole, and a request cut by a part boundary continues in the next part with the next split index.
    Parts with nothing to do have begin request = b. Raises ValueError if the pieces do not cover each request's
    pages exactly once, in order, or disagree with `num_splits` (a schedule built for other lengths).
    """
    meta = tile_scheduler_metadata.tolist()
    lengths = [int(s) for s in (cache_seqlens.tolist() if isinstance(cache_seqlens, torch.Tensor) else cache_seqlens)]
    pieces = []
    for part, (r0, b0, r1, b1, s0, *_zeros) in enumerate(meta):
        for r in range(r0, min(r1, len(lengths) - 1) + 1):
            pages = max(1, -(-lengths[r] // PAGE_SIZE))  # an empty request is one (empty) piece
            lo, hi = (b0 if r == r0 else 0), (b1 if r == r1 else pages)
            if lo < hi:
                pieces.append(Piece(part, r, s0 if r == r0 else 0, lo, hi, lengths[r]))
    counts = pieces_per_request(pieces, len(lengths))
    expected = (num_splits[1:] - num_splits[:-1]).tolist()
    if counts != expected:
        raise ValueError(f"the metadata's pieces per request {counts} disagree with num_splits {expected}: "
                         f"was it built for other lengths than {lengths}?")
    for r, s_k in enumerate(lengths):  # each request's pieces must chain over exactly its pages
        ranges = [(p.first_page, p.end_page) for p in sorted(pieces, key=lambda p: p.split) if p.request == r]
        edges = [0] + [e for lo_hi in ranges for e in lo_hi] + [max(1, -(-s_k // PAGE_SIZE))]
        if edges[0::2] != edges[1::2]:
            raise ValueError(f"the metadata's pieces of request {r} cover pages {ranges}, not 0 … "
                             f"{max(1, -(-s_k // PAGE_SIZE))} (its {s_k} tokens): was it built for other lengths?")
    return pieces


def pieces_per_request(pieces: Sequence[Piece], batch: int) -> list[int]:
    """Exercise (05): how many pieces each request is cut into (what num_splits' differences say)."""
    counts = [0] * batch
    for piece in pieces:
        counts[piece.request] += 1
    return counts


def part_units(pieces: Sequence[Piece], parts: int, overhead: int) -> list[int]:
    """Work units per SM part in the schedule's cost model: its pages, plus `overhead` for every piece it holds
    (each piece loads its Q and stores its output; `kernels.schedule.default_fixed_overhead` gives the value the
    schedule used)."""
    units = [0] * parts
    for piece in pieces:
        units[piece.part] += piece.pages + overhead
    return units


# ============================================================================================= 05: the combine
def piece_partials(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                   request: int, pieces: Sequence[Piece], softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The partial results of `request`'s pieces, as the split kernel writes them: attention over each piece's
    keys alone (stage 3's reference on that slice of the block table), in q's dtype (float64 for an exact check).

    Returns o_parts [n, s_q, h_q, 512] and lse_parts [n, s_q, h_q] (natural log). Non-causal only (s_q = 1
    decode): a causal window is relative to the request's last key, not to a piece's.
    """
    mine = sorted((p for p in pieces if p.request == request), key=lambda p: p.split)
    if not mine:
        raise ValueError(f"no piece of request {request} in the schedule")
    o_parts, lse_parts = [], []
    for piece in mine:
        lo, hi = piece.keys
        table = block_table[request:request + 1, piece.first_page:piece.end_page].contiguous()  # [1, pages]
        length = torch.tensor([hi - lo], dtype=torch.int32, device=cache_seqlens.device)
        o, lse = paged_mla_attention(q[request:request + 1], k_cache, table, length, D_NOPE, softmax_scale)
        o_parts.append(o[0])  # [s_q, h_q, 512]
        lse_parts.append(lse[0].transpose(0, 1))  # [h_q, s_q] -> [s_q, h_q]
    return torch.stack(o_parts), torch.stack(lse_parts)


def combine_partials(o_parts: torch.Tensor, lse_parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise (05): merge the partial results of one request's pieces, exactly.

    o_parts [n, ..., d], lse_parts [n, ...] (natural log; +inf or -inf for a piece with no keys, which gets
    weight 0). lse = log Σ_i exp(lse_i) and o = Σ_i exp(lse_i − lse)·o_i, computed from the largest lse_i so no
    weight overflows. Returns (o [..., d], lse [...]); a row with no keys at all gets o = 0, lse = +inf.
    """
    if o_parts.shape[:-1] != lse_parts.shape:
        raise ValueError(f"lse_parts {list(lse_parts.shape)} must be o_parts {list(o_parts.shape)} without its "
                         f"last dim")
    lse_parts = torch.where(torch.isposinf(lse_parts), float("-inf"), lse_parts)  # no keys: weight 0
    m = lse_parts.max(dim=0).values  # [...]
    empty = torch.isneginf(m)
    weights = torch.exp(lse_parts - torch.where(empty, 0.0, m))  # [n, ...], the largest is 1
    total = weights.sum(dim=0)  # [...]
    o = (weights[..., None] * o_parts).sum(dim=0) / torch.where(empty, 1.0, total)[..., None]
    lse = torch.where(empty, float("inf"), m + torch.log(torch.where(empty, 1.0, total)))
    return torch.where(empty[..., None], 0.0, o), lse


def check_like_flashmla(out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor,
                        ref_lse: torch.Tensor) -> ErrorMetrics:
    """FlashMLA's global checks of a kernel's bf16 output against an fp32 reference: no NaN leaked, cosine
    difference ≤ 5e-6, relative Frobenius error below bf16's unit roundoff 2⁻⁸, +inf LSE exactly where the
    reference has it (empty requests) and the LSE to 1e-5 elsewhere. Returns the error metrics; raises
    AssertionError naming the check that failed."""
    assert torch.isfinite(out).all(), "NaN or inf in the output: an unused cache slot leaked in"
    err = error_metrics(out.float(), ref_out.float())
    assert 1 - err.cosine <= 5e-6, f"cosine difference {1 - err.cosine:.3g} > 5e-6 ({err})"
    assert err.rel_frob < 2**-8, f"relative Frobenius error {err.rel_frob:.3g} >= 2^-8 ({err})"
    live = torch.isfinite(ref_lse)
    assert torch.equal(live, torch.isfinite(lse)), "LSE is +inf somewhere else than for the reference's empty rows"
    assert torch.allclose(lse[live].float(), ref_lse[live].float(), atol=1e-5, rtol=8.01 / 65536), "LSE differs"
    return err


# ============================================================================================= 06: profiling
def step_floor_ms(config: MLAConfig, kind: str, context: int, batch: int, copy_gbps: float,
                  matmul_tflops: float) -> float:
    """Exercise (06): the least time one decode step can take: max(bytes / bandwidth, FLOPs / matmul rate), with
    the step's bytes and FLOPs from the cost model (weights + cache + activations), in ms."""
    from ..measure.cost import decode_step_cost

    cost = decode_step_cost(config, kind, context, batch)
    return cost.roofline_seconds(copy_gbps * 1e9, matmul_tflops * 1e12) * 1e3


def usd_per_million_tokens(latency_ms: float, batch: int, layers: int = 61, usd_per_gpu_hour: float = 2.50) -> float:
    """Exercise (06): dollars per million generated tokens, if every one of `layers` layers took this attention
    step's time (attention only), on a GPU rented at `usd_per_gpu_hour`."""
    from ..measure.cost import cost_per_million_tokens, tokens_per_second

    return cost_per_million_tokens(tokens_per_second(batch, latency_ms / 1e3), usd_per_gpu_hour) * layers


def sequences_per_gpu(bytes_per_token_per_layer: int, context: int, *, layers: int = 61,
                      gpu_memory_bytes: float = 141e9, usable_fraction: float = 0.9,
                      weight_bytes: float = 671e9 / 8, page: int = PAGE_SIZE) -> int:
    """Exercise (06): how many sequences of `context` tokens fit in what the weights leave of one GPU's usable
    memory, with whole `page`-token pages (DeepSeek-V3's FP8 weights over 8 GPUs by default)."""
    budget = gpu_memory_bytes * usable_fraction - weight_bytes
    per_sequence = layers * bytes_per_token_per_layer * (-(-context // page) * page)
    return max(0, int(budget // per_sequence))


# ============================================================================================= 07: the FP8 row
@dataclass(frozen=True)
class Field:
    """A field of the 656-byte FP8 row: bytes [start, end)."""

    name: str
    start: int
    end: int
    dtype: str  # "e4m3", "float32" or "bf16"

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def fp8_fields() -> list[Field]:
    """The fields of FlashMLA's FP8 row, in byte order (from the constants of mla_tutorial.fp8)."""
    from .. import fp8

    tiles = [Field(f"c_kv tile {t}", t * fp8.TILE, (t + 1) * fp8.TILE, "e4m3") for t in range(fp8.NUM_TILES)]
    scales = [Field(f"scale {t}", fp8.SCALE_OFFSET + 4 * t, fp8.SCALE_OFFSET + 4 * (t + 1), "float32")
              for t in range(fp8.NUM_TILES)]
    return tiles + scales + [Field("k_rope", fp8.ROPE_OFFSET, fp8.ROW_BYTES, "bf16")]


@torch.no_grad()
def latent_rows(config: MLAConfig, tokens: int, *, weight_std: float = 0.02, sigma: float = 1.0,
                seed: int = 0) -> torch.Tensor:
    """Real cache rows: [c_kv | k_rope] of `tokens` positions, as a layer with `linear_init_` weights (std
    `weight_std`) projects hidden states ~ N(0, sigma²); bf16 [tokens, 576] (the rows stage 5 quantizes)."""
    from ..layers import MLAProjections, linear_init_

    if config.latent_dim != D_QK:
        raise ValueError(f"config must have 576-wide latent rows (kv_lora_rank 512 + rope 64), got {config.latent_dim}")
    layer = linear_init_(MLAProjections(config), std=weight_std, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = sigma * torch.randn(1, tokens, config.hidden_size, generator=gen)  # [1, T, hidden]
    c_kv, k_rope = layer.project_latent(x, layer.positions(1, 0, tokens, x.device))  # [1, T, 512], [1, T, 64]
    return torch.cat([c_kv, k_rope], dim=-1)[0].to(torch.bfloat16)  # [T, 576]


def scale_by_hand(amax: float) -> float:
    """Exercise (07): the scale of a tile whose largest |value| is amax: 2^⌈log2(max(amax / 448, 1e-4))⌉.

    In float32 as the quantizer computes it; the exponent from frexp (y = m·2^e, m in [0.5, 1)): ⌈log2 y⌉ is
    e − 1 when m = 0.5 (y a power of two) and e otherwise. NaN and inf come back as they are."""
    y = max(np.float32(amax) / np.float32(448.0), np.float32(1e-4))  # float32, as fp8.tile_scales
    if not math.isfinite(float(y)):
        return float(y) if not math.isnan(float(amax)) else float("nan")
    mantissa, exponent = math.frexp(float(y))  # exact: a float32 is a float64
    return math.ldexp(1.0, exponent - 1 if mantissa == 0.5 else exponent)


def read_fields(row8: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exercise (07): the three fields of one 656-byte row, read from its bytes: the 512 e4m3 values (as
    float32, before scaling), the 4 float32 scales and the 64 bf16 k_rope values."""
    from .. import fp8

    raw = row8.reshape(-1).view(torch.uint8)  # [656] bytes
    if raw.numel() != fp8.ROW_BYTES:
        raise ValueError(f"row8 must hold one {fp8.ROW_BYTES}-byte row, got {raw.numel()} bytes")
    return {"values": raw[:fp8.SCALE_OFFSET].view(fp8.FP8_DTYPE).float(),  # [512]
            "scales": raw[fp8.SCALE_OFFSET:fp8.ROPE_OFFSET].contiguous().view(torch.float32),  # [4]
            "k_rope": raw[fp8.ROPE_OFFSET:].contiguous().view(torch.bfloat16)}  # [64]


def fp8_ms_if_as_efficient(bf16_ms: float, bf16_bytes: float, fp8_bytes: float) -> float:
    """Exercise (07): the FP8 call's time if it read its (fewer) bytes at the same GB/s as the bf16 call."""
    return bf16_ms * fp8_bytes / bf16_bytes


@torch.no_grad()
def fp8_error_split(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                    softmax_scale: float) -> dict[str, ErrorMetrics]:
    """Where stage 5's difference from stage 4 comes from, on one decode call (q and k_cache bf16):

        stage5_vs_stage4  the FP8 kernel's output against the bf16 kernel's, on the same rows
        quantization      stage 3's attention on the dequantized FP8 cache against it on the bf16 cache (fp32)
        kernel            the FP8 kernel against stage 3 on the dequantized cache: the kernel's own rounding
        bf16_kernel       the bf16 kernel against stage 3 on the bf16 cache, for comparison
    """
    from ..fp8 import dequantize_k_cache, quantize_k_cache
    from ..kernels import flash_mla_with_kvcache, get_mla_metadata

    k8 = quantize_k_cache(k_cache)
    s_q, h_q = q.shape[1], q.shape[2]
    meta, splits = get_mla_metadata(cache_seqlens, s_q * h_q, 1)
    causal = s_q > 1
    out16, _ = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, D_NOPE, meta, splits,
                                      softmax_scale=softmax_scale, causal=causal)
    out8, _ = flash_mla_with_kvcache(q, k8, block_table, cache_seqlens, D_NOPE, meta, splits,
                                     softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=True)
    ref16, _ = paged_mla_attention(q.float(), k_cache.float(), block_table, cache_seqlens, D_NOPE, softmax_scale,
                                   causal)
    ref8, _ = paged_mla_attention(q.float(), dequantize_k_cache(k8).float(), block_table, cache_seqlens, D_NOPE,
                                  softmax_scale, causal)
    return {"stage5_vs_stage4": error_metrics(out8, out16), "quantization": error_metrics(ref8, ref16),
            "kernel": error_metrics(out8, ref8), "bf16_kernel": error_metrics(out16, ref16)}


__all__ = [
    "Field", "HeadTiles", "Piece", "check_like_flashmla", "combine_partials", "fp8_error_split", "fp8_fields",
    "fp8_ms_if_as_efficient", "head_tiles", "latent_rows", "part_units", "piece_partials", "pieces_per_request",
    "read_fields", "scale_by_hand", "schedule_pieces", "sequences_per_gpu", "step_floor_ms",
    "usd_per_million_tokens",
]
