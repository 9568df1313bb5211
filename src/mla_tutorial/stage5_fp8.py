"""Stage 5 — an FP8 latent cache in FlashMLA's 656-byte layout, read by the Triton kernel.

What changed since stage 4: the bytes of each cached row. Decode at 16-64 heads per GPU is bound by the bytes of
the cache it reads, and stage 4 already reads each byte once, so the next rung is fewer bytes. Each token's row
[c_kv (512) | k_rope (64)] is stored as FlashMLA's FP8 row (mla_tutorial/fp8.py):

    512 float8_e4m3fn values of c_kv | 4 float32 scales, one per 128 values | 64 bf16 values of k_rope

656 bytes instead of 1,152 (1.76x fewer): 1.76x more tokens in the same memory, and up to 1.76x less time at the
memory-bound shapes. The rows are quantized as they are appended, in the kernel that writes them into their
pages (`kernels.append_rows`, stage 4's append with the quantization fused: one launch a decode step; the rest of
the cache is never read or rewritten; fp8.quantize_rows is its reference and its path outside the kernels' reach),
and the kernel
(`flash_mla_with_kvcache(..., is_fp8_kvcache=True)`: v5's small tile on a CPU, its Gluon FP8 tiles on Hopper)
multiplies each 128-value chunk by its scale as it loads it, so from there on it is stage 4's bf16 tensor-core
attention. That dequantization is exact (an e4m3
value times a power of two is a bf16 value), so the kernel computes exactly what stage 4 would on the dequantized
cache: all the difference between stages 4 and 5 is the rounding of c_kv to e4m3.

What it costs in accuracy (docs/fp8.md, measured on a CPU by scripts/fp8_accuracy.py): each c_kv value is rounded
to 3 mantissa bits, at most 2^-4 of its size (the scale keeps each tile's largest value within [224, 448]): 2.7 %
relative (Frobenius) error on the cached c_kv. Against stage 4 with the same weights (tiny config) the attention
output moves by 2.5-4.2 % relative, cosine >= 0.9991, of which the kernel's own rounding is 0.2-0.3 %, as in
stage 4. In a 2-layer TinyDecoder, teacher-forced on 320 greedy bf16 tokens: 97.8 % top-1 agreement and a KL of
8.5e-7 nats with linear_init_'s weights (below bf16's own distance from float32), 86 % and 9.6e-3 nats with the
tests' peaked weights (9x bf16's). Random weights: a trained model's sensitivity is not measured here.

Why RoPE stays in bf16: the 64 RoPE values carry the position signal that the scores q_rope·k_rope add, and
their magnitude is not c_kv's. c_kv leaves an RMSNorm (RMS 1.01 whatever the hidden states' scale), k_rope is a
plain projection, rotated, whose magnitude follows the hidden states (RMS 0.3-135 in docs/fp8.md's settings). A
scale shared with c_kv clips k_rope once it outgrows c_kv (up to 97 % of its values in docs/fp8.md's settings;
vLLM issue #42956 reports it for a per-tensor FP8 MLA cache); FlashMLA keeps k_rope in bf16 for 128 of the 656
bytes. Quantizing it too, with its own scale, would add 3-15 % to the error above at the tests' weights.

The kernel takes bf16 only in this mode (FlashMLA's FP8 path is bf16 too), so stage 5 runs in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .fp8 import D_ROW, FP8_DTYPE, ROW_BYTES, dequantize_k_cache, quantize_rows
from .kernels import flash_mla_with_kvcache
from .stage3_paged import paged_mla_attention
from .stage4_triton import TritonLatentCache, TritonMLA


class FP8LatentCache(TritonLatentCache):
    """Stage 4's page pool with FlashMLA's 656-byte FP8 rows: `pool` is float8_e4m3fn [num_blocks, 64, 656].

    Sequences, pages and block tables work as in PagedLatentCache; `append` takes the same bf16 rows [B, T, 576]
    and stores their FP8 form, quantized in the kernel that writes them (stage 4's, QUANTIZE). `k_cache` is the
    pool as FlashMLA's FP8 k_cache [num_blocks, 64, 1, 656].
    """

    QUANTIZE = True

    def __init__(self, num_blocks: int, page_size: int = 64, latent_dim: int = D_ROW, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                 fill_value: float | None = None, shuffle: bool = False, seed: int = 0,
                 max_seqs: int | None = None, max_pages_per_seq: int | None = None):
        if latent_dim != D_ROW:
            raise ValueError(f"latent_dim must be {D_ROW} (c_kv 512 + k_rope 64: FlashMLA's FP8 layout), "
                             f"got {latent_dim!r}")
        if dtype != torch.bfloat16:
            raise TypeError(f"dtype (of the rows before quantization) must be torch.bfloat16, got {dtype!r}")
        super().__init__(num_blocks, page_size, ROW_BYTES, dtype=FP8_DTYPE, device=device, shuffle=shuffle,
                         seed=seed, max_seqs=max_seqs, max_pages_per_seq=max_pages_per_seq)
        if fill_value is not None:  # every row the FP8 form of a row of fill_value (NaN: NaN values and scales)
            self.pool.copy_(self._row_of(fill_value).expand_as(self.pool))

    def _row_of(self, value: float) -> torch.Tensor:
        return quantize_rows(torch.full((1, 1, D_ROW), value, dtype=torch.bfloat16, device=self.pool.device))

    @property
    def row_width(self) -> int:
        """The width of the rows that `append` takes: 576 (bf16), stored as 656 bytes."""
        return D_ROW

    @property
    def row_dtype(self) -> torch.dtype:
        """The dtype of the rows that `append` takes (and `dequantized` returns)."""
        return torch.bfloat16

    def _torch_write(self, rows: slice | torch.Tensor, kv: torch.Tensor) -> None:
        """NEW: where the append kernel (which quantizes kv [B, T, 576] bf16 as it writes, QUANTIZE) does not run
        (CPU tensors outside Triton's interpreter): quantized by fp8.quantize_rows, then stage 3's write."""
        super()._torch_write(rows, quantize_rows(kv))  # [B, T, 656] bytes

    def dequantized(self) -> torch.Tensor:
        """The whole pool back in bf16, as FlashMLA's k_cache [num_blocks, 64, 1, 576] (a copy; for checks)."""
        return dequantize_k_cache(self.k_cache)

    def poison_unused(self, value: float = float("nan")) -> None:
        """Fill every row that holds no live token with the FP8 form of a row of `value` (tests: NaN values,
        NaN scales and NaN RoPE, which must never leak into an output)."""
        table, lengths = self.block_table(), self.cache_seqlens()  # [B, W] int32, [B] int32
        pos = torch.arange(table.shape[1] * self.page_size, device=self.pool.device)  # [W·64] token positions
        live = pos[None, :] < lengths.long()[:, None]  # [B, W·64]
        rows = table.long()[:, pos // self.page_size] * self.page_size + pos % self.page_size  # [B, W·64]
        used = torch.zeros(self.num_blocks * self.page_size, dtype=torch.bool, device=self.pool.device)
        used[rows[live]] = True
        flat = self.pool.view(-1, ROW_BYTES)  # [N·64, 656]
        flat[~used] = self._row_of(value).view(1, ROW_BYTES)


class FP8MLA(TritonMLA):
    """Stage 5: stage 4 over an FP8LatentCache; attention by `flash_mla_with_kvcache(..., is_fp8_kvcache=True)`.

    `forward(hidden_states, cache=None, seq_ids=None)` as in stage 3; the cache, made by `new_cache`, holds
    656 bytes per token. bf16 only.
    """

    cache_class = FP8LatentCache

    def cache_bytes_per_token(self, dtype: torch.dtype | None = None) -> int:
        """656: FlashMLA's FP8 row (512 e4m3 + 4 float32 scales + 64 bf16), whatever the weights' dtype."""
        return ROW_BYTES

    def attend(self, q: torch.Tensor, cache: FP8LatentCache, block_table: torch.Tensor,
               cache_seqlens: torch.Tensor, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Latent attention q [B, T, H, 576] (bf16) → [B, T, H, d_c] over the FP8 pages, by one kernel call."""
        if q.dtype != torch.bfloat16:
            raise TypeError(f"FP8MLA runs its kernel in bf16 (the FP8 rows keep k_rope in bf16), but the module is "
                            f"{q.dtype}; use module.to(torch.bfloat16)")
        B, T, H, _ = q.shape
        metadata, num_splits = self.schedule(cache_seqlens, T * H, cache, seq_ids)  # (stage 4's: shared in a step)
        out, _ = flash_mla_with_kvcache(q, cache.k_cache, block_table, cache_seqlens, self.config.kv_lora_rank,
                                        metadata, num_splits, softmax_scale=self.config.softmax_scale,
                                        causal=T > 1, is_fp8_kvcache=True)  # NEW: 656-byte rows
        return out  # [B, T, H, d_c]

    def validate(self, hidden_states, cache, seq_ids):
        """Stage 4's checks (no gradients, the cache's kind and room), with the module in bf16 asked first."""
        weight = next(self.parameters())
        if weight.dtype != torch.bfloat16:
            raise TypeError(f"FP8MLA runs in bf16 (FlashMLA's FP8 path: k_rope is bf16 in the rows), but the module "
                            f"is {weight.dtype}; use module.to(torch.bfloat16)")
        return super().validate(hidden_states, cache, seq_ids)

    def check_cache(self, cache: object, x: torch.Tensor) -> None:
        """The cache must be an FP8LatentCache (656-byte rows) on the weights' device with the config's pages, and
        the module bf16 (the kernel's FP8 path is bf16); stage 3's check asks for 576-wide rows in x's dtype."""
        if x.dtype != torch.bfloat16:
            raise TypeError(f"FP8MLA runs in bf16 (FlashMLA's FP8 path), but hidden_states and the module are "
                            f"{x.dtype}; use module.to(torch.bfloat16)")
        if not isinstance(cache, FP8LatentCache):
            raise TypeError(f"cache must be an FP8LatentCache (from FP8MLA.new_cache) or None, "
                            f"got {type(cache).__name__}")
        if (cache.pool.device, cache.page_size) != (x.device, self.config.page_size):
            raise ValueError(f"cache must live on {x.device} with {self.config.page_size}-token pages (this FP8MLA, "
                             f"config {self.config.name!r}), got a cache {cache.describe()}")


class FP8ReferenceMLA(FP8MLA):
    """Stage 5's cache with stage 3's torch attention over its dequantized pages: the same cached bytes, no kernel.

    The yardstick for stage 5's kernel (it must match this to bf16 tolerances, since its dequantization is exact)
    and a CPU-fast stand-in for it where the interpreter would be slow (long generations in docs/fp8.md).
    """

    def attend(self, q: torch.Tensor, cache: FP8LatentCache, block_table: torch.Tensor,
               cache_seqlens: torch.Tensor, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        out, _ = paged_mla_attention(q, cache.dequantized(), block_table, cache_seqlens, self.config.kv_lora_rank,
                                     self.config.softmax_scale, causal=True)
        return out  # [B, T, H, d_c]


__all__ = ["FP8LatentCache", "FP8MLA", "FP8ReferenceMLA"]
