"""Stage 4 — a fused, tiled Triton decode kernel over the paged latent cache (in the spirit of FlashMLA).

What changed since stage 3: how attention reads the pages. Stage 3 gathers every page of every sequence into
a fresh [B, S, 576] tensor, upcasts it, and runs two einsums and a softmax over it: the cache is read once and
written and read again several times over, in several kernel launches. Stage 4 calls one Triton kernel
(`mla_tutorial.kernels`, version v4) that walks the block table itself:

- all query rows that share the latent KV head (s_q·h_q of them) form the M dimension of one tile, so each
  64-token page is loaded from memory once and serves every head, as key (576 columns) and value (first 512);
- scores q·c_kvᵀ + q_rope·k_ropeᵀ in fp32 and an online softmax in base 2 (FlashAttention-2, Dao 2023), so no
  S-long row of scores is ever stored;
- long contexts are split over several programs (split-KV) whose partial outputs are merged by their LSEs;
- a load-balanced schedule computed on the GPU (`get_mla_metadata`) gives every SM the same number of pages;
  within a decoder step (`step.one_step`, which `TinyDecoder` uses) the first layer computes it and the others,
  whose caches hold the same lengths, reuse it.

Decode is memory-bound (≈ 2·h_q·s_q FLOP per cached byte, see docs/kernel.md), so the aim is to move the
cache's 1,152 B per token once, at the GPU's copy bandwidth. The kernel takes bf16 or fp16; the stage refuses
other dtypes with a clear error (on a CPU it runs in Triton's interpreter: set TRITON_INTERPRET=1 before
importing it, which `mla_tutorial.kernels` does for you when no CUDA device is present).

The append is one kernel too (`TritonLatentCache`, since 2026-12-04): stage 3 writes a step's new rows with ~10
small torch ops (positions, pages, slots, an index_copy_, the lengths), each a launch of a few µs even inside a CUDA
graph; `kernels.append_rows` finds each new row's page and slot and writes it in one launch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .contract import KERNEL_DTYPES, is_interpreter  # KERNEL_DTYPES: the Triton kernel's (FlashMLA's): bf16, fp16
from .kernels import flash_mla_with_kvcache, get_mla_metadata
from .kernels.append import append_rows
from .stage3_paged import PagedLatentCache, PagedMLA
from .step import in_step, shared

#: False: stage 4's and 5's caches write with stage 3's torch ops (stage 5 quantizing with fp8.quantize_rows first),
#: as until 2026-12-04 (a timing knob: scripts/gpu_final.sh's append step measures both)
APPEND_KERNEL = True


class TritonLatentCache(PagedLatentCache):
    """Stage 3's page pool whose `append` writes the new rows with one kernel (`kernels.append_rows`: each row's
    page and slot found on the device, the row written, the lengths grown) instead of stage 3's torch ops. Rows of
    another width than 576, or on the CPU outside Triton's interpreter, take stage 3's write."""

    QUANTIZE = False  # (stage 5's cache quantizes the rows in the same kernel)

    def _write(self, rows: slice | torch.Tensor, kv: torch.Tensor) -> None:
        if APPEND_KERNEL and kv.shape[-1] == 576 and (kv.is_cuda or is_interpreter()):
            append_rows(self.pool, kv, self.table, self.lengths, rows, self.page_size, self.QUANTIZE)
        else:
            self._torch_write(rows, kv)

    def _torch_write(self, rows: slice | torch.Tensor, kv: torch.Tensor) -> None:
        """Where the kernel does not write: stage 3's write (stage 5 quantizes the rows first)."""
        super()._write(rows, kv)


class TritonMLA(PagedMLA):
    """Stage 4: stage 3 with its torch attention replaced by the FlashMLA-compatible Triton kernel.

    A decode step that needs no new page has no host sync (the schedule is computed on the device, the cache's
    block table and lengths live there), so it can be captured in a CUDA graph (`mla_tutorial.graphs`).
    `new_cache` makes a TritonLatentCache (its append one kernel).
    """

    cache_class = TritonLatentCache

    def validate(self, hidden_states: torch.Tensor, cache: PagedLatentCache | None,
                 seq_ids: Sequence[int] | None) -> tuple[torch.Tensor, PagedLatentCache | None, list[int] | None]:
        """Stage 3's checks plus the kernel's: dtype, and no gradients; all before the cache is touched."""
        weight = next(self.parameters())
        if weight.dtype not in KERNEL_DTYPES:
            raise TypeError(f"TritonMLA runs its kernel in bf16 or fp16, but the module is {weight.dtype}; "
                            f"use module.to(torch.bfloat16) (stage 3, PagedMLA, runs in any dtype)")
        needs_grad = any(p.requires_grad for p in self.parameters()) or (
            isinstance(hidden_states, torch.Tensor) and hidden_states.requires_grad)
        if torch.is_grad_enabled() and needs_grad:
            # The kernel has no backward: autograd would see its output as a constant and every gradient through
            # attention would silently be zero. Refuse instead, before anything is written to the cache.
            raise RuntimeError("TritonMLA is inference-only: its Triton kernel has no backward pass, so gradients "
                               "through attention would silently be lost. Call it under torch.no_grad() or "
                               "torch.inference_mode(), or call module.requires_grad_(False); to train, use "
                               "stage 3 (PagedMLA), which computes the same attention in torch")
        return super().validate(hidden_states, cache, seq_ids)

    def schedule(self, cache_seqlens: torch.Tensor, rows_per_kv: int, cache: PagedLatentCache,
                 seq_ids: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel's schedule for these lengths: computed on the GPU (no host sync), or, within a decoder step
        (`step.one_step`), the one an earlier layer made for the same query rows and the same host-mirrored lengths
        of `seq_ids` (only read in a step: outside one, nothing is built for the key)."""
        def make():
            return get_mla_metadata(cache_seqlens, rows_per_kv, 1)

        if seq_ids is None or not in_step():
            return make()
        return shared(("mla schedule", cache.lengths_of(seq_ids), rows_per_kv, cache_seqlens.device), make)

    def attend(self, q: torch.Tensor, cache: PagedLatentCache, block_table: torch.Tensor,
               cache_seqlens: torch.Tensor, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Latent attention q [B, T, H, 576] → [B, T, H, d_c] by one fused kernel call (plus combine)."""
        B, T, H, _ = q.shape
        # The schedule: s_q·h_q query rows per latent head (h_kv = 1); one per decoder step where lengths agree.
        metadata, num_splits = self.schedule(cache_seqlens, T * H, cache, seq_ids)
        out, _ = flash_mla_with_kvcache(q, cache.k_cache, block_table, cache_seqlens, self.config.kv_lora_rank,
                                        metadata, num_splits, softmax_scale=self.config.softmax_scale,
                                        causal=T > 1)  # [B, T, H, d_c]
        return out
