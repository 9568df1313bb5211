"""Course helpers for notebooks 01–04 (stages 0–3), and the solutions of their exercises.

The notebooks show each idea in a few lines; what they run lives here, tested in `tests/test_course_basics.py`.

Helpers
    decode_steps, prefill_and_decode     the decode loop: prefill a prompt, then one token per sequence per step
    measured_cache_bytes                 bytes a stage's cache holds after prefilling S tokens through the stage (02)
    decode_step_peak_bytes               the peak of the tensors one decode step allocates (02)
    decode_step_times                    one decode step's median time per stage and context on this machine (03)
    decode_together, decode_each_alone   stage 3's variable-length batch, and the one-sequence-at-a-time
                                         reference it must equal (04)

Exercise solutions, named for what they compute (notebook.exercise):
    01.1 mha_cache_bytes          01.2 max_cached_tokens        01.3 decode_bytes_read
    02.1 latent_saving            02.2 expand_latent_cache      02.3 reexpansion_bytes
    03.1 absorb_query_nope        03.2 latent_output_to_heads   03.3 fused_query_weight (query_absorb_macs)
    04.1 token_row                04.2 pages_to_take            04.3 gather_sequence

A notebook's answer cell calls the solution by default, so that the notebook runs from top to bottom (nbval runs
it in CI); a learner replaces that call with their own code, and the check cell below says whether it is right.
Symbols are the DeepSeek-V2 paper's (arXiv:2405.04434, section 2.1): c_kv, k_rope, W_UK, W_UV, W_UQ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..config import MLAConfig
from ..layers import MLAProjections
from ..measure.memory import cache_footprint, peak_memory
from ..measure.timing import cache_batch, in_place, prefill, random_cache, random_hidden, time_decode
from ..stage0_naive import MHACache
from ..stage1_latent import LatentCache
from ..stage3_paged import PagedLatentCache, PagedMLA


# ------------------------------------------------------------------------------------------------ checks
def _count(name: str, value: Any, minimum: int = 0) -> int:
    """An int ≥ minimum (not a bool), or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int ≥ {minimum}, got {value!r}")
    return int(value)


def _config(config: Any) -> MLAConfig:
    if not isinstance(config, MLAConfig):
        raise TypeError(f"config must be an MLAConfig, got {type(config).__name__}")
    return config


def _stage(module: Any, name: str = "module") -> MLAProjections:
    if not isinstance(module, MLAProjections):
        raise TypeError(f"{name} must be an MLA stage (NaiveMHA … PagedMLA), got {type(module).__name__}")
    return module


def _hidden(name: str, x: Any, module: MLAProjections, batch: int | None = None) -> torch.Tensor:
    """A [batch, tokens ≥ 0, hidden] tensor for `module`, or an error naming `name` and the shape expected."""
    hidden = module.config.hidden_size
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != hidden:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor [batch, tokens, {hidden}], got {got}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} has batch {x.shape[0]} but the prompt has batch {batch}")
    return x


# ------------------------------------------------------------------------------------------------ the decode loop
def decode_steps(module: nn.Module, cache: Any, new_tokens: torch.Tensor) -> Iterator[tuple[torch.Tensor, Any]]:
    """Decode new_tokens [B, steps, hidden] one token per sequence per call; yield (output [B, 1, hidden], cache).

    Every call feeds the next token of each sequence and passes the cache back in: stages 0 and 1 return a new,
    longer cache (torch.cat), stages 2 and 3 extend theirs in place. No autograd.
    """
    _hidden("new_tokens", new_tokens, _stage(module))
    for i in range(new_tokens.shape[1]):
        with torch.no_grad():
            y, cache = module(new_tokens[:, i : i + 1], cache)  # one token in: y [B, 1, hidden]
        yield y, cache


def prefill_and_decode(module: nn.Module, prompt: torch.Tensor, new_tokens: torch.Tensor,
                       cache: Any = None) -> tuple[torch.Tensor, Any]:
    """Prefill `prompt` [B, T, hidden] in one call, then decode new_tokens [B, steps, hidden] one at a time.

    Returns every output, [B, T + steps, hidden], and the final cache. Because the cache only saves work, the
    outputs equal one causal pass over the T + steps tokens: the property every stage is held to.
    """
    prompt = _hidden("prompt", prompt, _stage(module))
    if prompt.shape[1] == 0:
        raise ValueError(f"prompt must hold at least one token, got shape {list(prompt.shape)}")
    _hidden("new_tokens", new_tokens, module, batch=prompt.shape[0])
    with torch.no_grad():
        y, cache = module(prompt, cache)  # y [B, T, hidden]
    outputs = [y]
    for y_step, cache_now in decode_steps(module, cache, new_tokens):
        outputs.append(y_step)
        cache = cache_now
    return torch.cat(outputs, dim=1), cache  # [B, T + steps, hidden]


def decode_together(stage3: PagedMLA, prompts: Sequence[torch.Tensor], new_tokens: torch.Tensor, *,
                    seed: int = 0, poison: bool = True) -> tuple[torch.Tensor, PagedLatentCache]:
    """Stage 3 serving a variable-length batch: prompts [1, T_k, hidden] prefilled one by one into one shuffled
    pool (`seq_ids=[k]`), every unused slot set to NaN (`poison`), then all sequences decoded together.

    new_tokens [B, steps, hidden], B = len(prompts). Returns the decode outputs [B, steps, hidden] and the cache.
    Each sequence gets its own RoPE positions, so the result must equal `decode_each_alone`.
    """
    if not isinstance(stage3, PagedMLA):
        raise TypeError(f"stage3 must be a PagedMLA, got {type(stage3).__name__}")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    for k, p in enumerate(prompts):
        if _hidden(f"prompts[{k}]", p, stage3).shape[:1] != (1,) or p.shape[1] == 0:
            raise ValueError(f"prompts[{k}] must be one sequence [1, tokens ≥ 1, hidden], got {list(p.shape)}")
    _hidden("new_tokens", new_tokens, stage3, batch=len(prompts))
    longest = max(p.shape[1] for p in prompts) + new_tokens.shape[1]
    with torch.no_grad():
        cache = stage3.new_cache(len(prompts), longest, shuffle=True, seed=seed)  # B sequences allocated
        for seq_id, p in zip(cache.seq_ids, prompts, strict=True):
            stage3(p, cache, seq_ids=[seq_id])  # prefill one sequence into the shared pool
        if poison:
            cache.poison_unused()
    outputs = [y for y, _ in decode_steps(stage3, cache, new_tokens)]  # all sequences in one batch per step
    return torch.cat(outputs, dim=1), cache  # [B, steps, hidden]


def decode_each_alone(module: nn.Module, prompts: Sequence[torch.Tensor], new_tokens: torch.Tensor) -> torch.Tensor:
    """The reference for `decode_together`: each prompt [1, T_k, hidden] prefilled and decoded on its own.

    Returns the decode outputs [B, steps, hidden] (row k from prompts[k] and new_tokens[k]).
    """
    _hidden("new_tokens", new_tokens, _stage(module))
    if len(prompts) != new_tokens.shape[0]:
        raise ValueError(f"new_tokens has batch {new_tokens.shape[0]} but {len(prompts)} prompts were given")
    steps = new_tokens.shape[1]
    rows = [prefill_and_decode(module, p, new_tokens[k : k + 1])[0][:, p.shape[1] :] for k, p in enumerate(prompts)]
    return torch.cat(rows, dim=0) if steps else new_tokens.new_zeros(len(prompts), 0, new_tokens.shape[-1])


# ------------------------------------------------------------------------------------------------ measurements
def measured_cache_bytes(module: nn.Module, lengths: Sequence[int], *, batch: int = 1, seed: int = 0) -> list[int]:
    """Bytes the stage's cache holds after prefilling each of `lengths` tokens of random hidden states per
    sequence through the stage itself (`measure.timing.prefill`, `measure.memory.cache_footprint`)."""
    _stage(module)
    batch = _count("batch", batch, 1)
    lengths = [_count(f"lengths[{i}]", S, 1) for i, S in enumerate(lengths)]
    return [cache_footprint(prefill(module, batch, S, seed=seed))["bytes"] for S in lengths]


def decode_step_peak_bytes(module: nn.Module, cache: Any, *, seed: int = 0) -> int:
    """Peak bytes of the tensors one decode step allocates (one random token per sequence) over `cache`, above
    what existed before it: the new cache when a stage grows it by torch.cat, and every temporary
    (`measure.memory.peak_memory`). An in-place cache is put back as it was afterwards."""
    _stage(module)
    x = random_hidden(module, cache_batch(cache), 1, torch.Generator().manual_seed(seed))  # [B, 1, hidden]
    with torch.inference_mode():  # caches from measure.timing are inference tensors: update them in this mode
        saved = cache.state() if in_place(cache) else None
        peak = peak_memory(lambda: module(x, cache), next(module.parameters()).device)
        if saved is not None:
            cache.restore(saved)
    return peak


def decode_step_times(stages: Mapping[str, nn.Module], contexts: Sequence[int], *, warmup: int = 2, reps: int = 15,
                      threads: int = 1, seed: int = 0) -> dict[str, list[float]]:
    """Median time of one decode step in milliseconds, per stage and context, on this machine (batch 1).

    Each stage decodes one token over a cache of its own kind holding `context` random rows
    (`measure.timing.random_cache`: the values do not change the cost); `measure.timing.time_decode` reports the
    median of at least `reps` steps that all start from the same prefix. `threads` fixes torch's CPU threads
    while timing (one thread is the least disturbed by other load on a small machine); restored afterwards.
    The numbers depend on the machine: tests never assert them.
    """
    _count("threads", threads, 1)
    contexts = [_count(f"contexts[{i}]", S, 1) for i, S in enumerate(contexts)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times: dict[str, list[float]] = {}
        for label, module in stages.items():
            _stage(module, f"stages[{label!r}]")
            times[label] = [time_decode(module, random_cache(module, 1, S, seed=seed), warmup=warmup,
                                        reps=reps, seed=seed).median_s * 1e3 for S in contexts]
        return times
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ 01: exercises
def mha_cache_bytes(config: MLAConfig, tokens: int, layers: int = 1, element_size: int = 2) -> int:
    """Exercise 01.1: bytes of stage 0's per-head cache for `tokens` tokens over `layers` layers.

    Every head keeps its key (d_h + d^R_h wide) and its value (d_v wide):
    tokens · layers · n_h · (d_h + d^R_h + d_v) · e. DeepSeek-V3, one token, one layer, bf16: 81,920 B.
    """
    c = _config(config)
    tokens, layers = _count("tokens", tokens), _count("layers", layers, 1)
    element_size = _count("element_size", element_size, 1)
    return tokens * layers * c.num_heads * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * element_size


def max_cached_tokens(config: MLAConfig, memory_bytes: int | float, layers: int = 1, element_size: int = 2,
                      kind: str = "mha") -> int:
    """Exercise 01.2: the most tokens whose cache fits in `memory_bytes` (the cache alone: no weights).

    floor(memory / (bytes per token per layer · layers)), with the per-head layout (kind "mha", stage 0) or the
    latent one (kind "latent", stages 1–4). DeepSeek-V3 in 80 GB, bf16, 61 layers: 16,009 tokens per-head.
    """
    c = _config(config)
    if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, numbers.Real) or not memory_bytes >= 0:
        raise ValueError(f"memory_bytes must be a number ≥ 0, got {memory_bytes!r}")
    per_token = c.cache_bytes_per_token(kind, _count("element_size", element_size, 1)) * _count("layers", layers, 1)
    return int(memory_bytes // per_token)


def decode_bytes_read(config: MLAConfig, prompt_tokens: int, new_tokens: int, layers: int = 1,
                      element_size: int = 2, kind: str = "mha") -> int:
    """Exercise 01.3: cache bytes read while decoding `new_tokens` tokens after a prompt of `prompt_tokens`.

    Decode step i (1 … n) appends its token and attends to all T + i cached tokens, so the steps read
    Σ_i (T + i) = n·T + n(n + 1)/2 rows: the traffic grows with the square of the generated length.
    """
    T, n = _count("prompt_tokens", prompt_tokens), _count("new_tokens", new_tokens)
    per_token = _config(config).cache_bytes_per_token(kind, _count("element_size", element_size, 1))
    return per_token * _count("layers", layers, 1) * (n * T + n * (n + 1) // 2)


# ------------------------------------------------------------------------------------------------ 02: exercises
def latent_saving(config: MLAConfig) -> float:
    """Exercise 02.1: how many times smaller the latent cache is than the per-head one.

    n_h · (d_h + d^R_h + d_v) / (d_c + d^R_h): 128 · 320 / 576 = 71.1 for DeepSeek-V3, 8.9 for V2-Lite.
    """
    c = _config(config)
    return c.num_heads * (c.qk_head_dim + c.v_head_dim) / (c.kv_lora_rank + c.qk_rope_head_dim)


@torch.no_grad()
def expand_latent_cache(module: MLAProjections, cache: LatentCache) -> MHACache:
    """Exercise 02.2: stage 0's per-head cache, rebuilt from stage 1's latent cache and the module's weights.

    k[h] = [W_UK[h] c_kv ; k_rope] (the one k_rope copied into every head) and v[h] = W_UV[h] c_kv (paper eqs.
    10, 11 and 17): everything stage 0 caches is a function of the 576-wide rows, so caching them loses nothing.
    """
    _stage(module)
    if not isinstance(cache, LatentCache):
        raise TypeError(f"cache must be a LatentCache (from LatentMLA or AbsorbedMLA), got {type(cache).__name__}")
    c = module.config
    if cache.kv.shape[-1] != c.latent_dim or cache.kv_lora_rank != c.kv_lora_rank:
        raise ValueError(f"cache rows must be {c.latent_dim} wide with {c.kv_lora_rank} latent columns (this "
                         f"module's config {c.name!r}), got {cache.kv.shape[-1]} and {cache.kv_lora_rank}")
    k_nope = torch.einsum("hdc,bsc->bhsd", module.W_UK, cache.c_kv)  # [B, H, S, d_h]
    v = torch.einsum("hvc,bsc->bhsv", module.W_UV, cache.c_kv)  # [B, H, S, d_v]
    k_rope = cache.k_rope[:, None].expand(-1, c.num_heads, -1, -1)  # [B, H, S, d^R_h]: shared by every head
    return MHACache(torch.cat([k_nope, k_rope], dim=-1), v)  # k [B, H, S, d_h + d^R_h]


def reexpansion_bytes(config: MLAConfig, context: int, batch: int = 1, element_size: int = 2) -> int:
    """Exercise 02.3: bytes of the per-head keys and values stage 1 builds from its cache at every step.

    kv_b_proj applied to all S cached latents: B · S · n_h · (d_h + d_v) · e, 2 GiB per layer per step for
    DeepSeek-V3 at S = 32,768 in bf16, against a cache of 36 MiB.
    """
    c = _config(config)
    S, B = _count("context", context), _count("batch", batch, 1)
    return B * S * c.num_heads * (c.qk_nope_head_dim + c.v_head_dim) * _count("element_size", element_size, 1)


# ------------------------------------------------------------------------------------------------ 03: exercises
def absorb_query_nope(q_nope: torch.Tensor, W_UK: torch.Tensor) -> torch.Tensor:
    """Exercise 03.1: the latent query q̃[h] = W_UK[h]ᵀ q_nope[h]: q_nope [..., H, d_h], W_UK [H, d_h, d_c] →
    [..., H, d_c]. Then q̃[h] · c_kv = q_nope[h] · (W_UK[h] c_kv) for every cached c_kv."""
    if W_UK.dim() != 3 or q_nope.dim() < 2 or q_nope.shape[-2:] != W_UK.shape[:2]:
        raise ValueError(f"q_nope must be [..., H, d_h] and W_UK [H, d_h, d_c] with the same H and d_h, got "
                         f"{list(q_nope.shape)} and {list(W_UK.shape)}")
    return torch.einsum("...hd,hdc->...hc", q_nope, W_UK)  # [..., H, d_c]


def latent_output_to_heads(o_latent: torch.Tensor, W_UV: torch.Tensor) -> torch.Tensor:
    """Exercise 03.2: each head's output o[h] = W_UV[h] õ[h] from attention's latent output õ = Σ_s p_s c_kv_s:
    o_latent [..., H, d_c], W_UV [H, d_v, d_c] → [..., H, d_v]. Equals Σ_s p_s (W_UV[h] c_kv_s)."""
    if W_UV.dim() != 3 or o_latent.dim() < 2 or o_latent.shape[-2] != W_UV.shape[0] \
            or o_latent.shape[-1] != W_UV.shape[2]:
        raise ValueError(f"o_latent must be [..., H, d_c] and W_UV [H, d_v, d_c] with the same H and d_c, got "
                         f"{list(o_latent.shape)} and {list(W_UV.shape)}")
    return torch.einsum("...hc,hvc->...hv", o_latent, W_UV)  # [..., H, d_v]


def W_UQ(module: MLAProjections) -> torch.Tensor:
    """The query up-projection's no-RoPE rows per head, [H, d_h, d'_c] (a view of q_b_proj.weight; of q_proj's
    weight, [H, d_h, hidden], when the config has no query compression, as in V2-Lite)."""
    c = _stage(module).config
    weight = module.q_proj.weight if c.q_lora_rank is None else module.q_b_proj.weight  # [H·(d_h + d^R_h), in]
    return weight.view(c.num_heads, c.qk_head_dim, -1)[:, : c.qk_nope_head_dim]  # [H, d_h, d'_c]


@torch.no_grad()
def fused_query_weight(module: MLAProjections) -> torch.Tensor:
    """Exercise 03.3: W_UK[h]ᵀ W_UQ[h] for every head, [H, d_c, d'_c]: one matrix from the compressed query c_Q
    straight to the latent query q̃ ("absorb W_UK into W_UQ", paper section 2.1.2)."""
    return torch.einsum("hdc,hdq->hcq", _stage(module).W_UK, W_UQ(module))  # [H, d_c, d'_c]


def query_absorb_macs(config: MLAConfig) -> dict[str, int]:
    """Multiply-adds per head and token to go from c_Q to q̃: with the fused matrix (d_c · d'_c) or with W_UQ then
    W_UK in sequence (d'_c · d_h + d_h · d_c). DeepSeek-V3: 786,432 against 262,144, so the code keeps them apart."""
    c = _config(config)
    d_in = c.q_lora_rank if c.q_lora_rank is not None else c.hidden_size
    d_h, d_c = c.qk_nope_head_dim, c.kv_lora_rank
    return {"fused": d_c * d_in, "sequential": d_in * d_h + d_h * d_c}


# ------------------------------------------------------------------------------------------------ 04: exercises
def _table_and_lengths(block_table: Any, cache_seqlens: Any, b: Any) -> tuple[int, int]:
    """Check the block table [B, W] and lengths [B] and the sequence index b; return (b, its length)."""
    if not isinstance(block_table, torch.Tensor) or block_table.dim() != 2:
        raise ValueError(f"block_table must be a tensor [batch, max_blocks], got "
                         f"{list(block_table.shape) if isinstance(block_table, torch.Tensor) else block_table!r}")
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.shape != block_table.shape[:1]:
        raise ValueError(f"cache_seqlens must be a tensor [{block_table.shape[0]}] (one length per row of "
                         f"block_table), got {cache_seqlens!r}")
    b = _count("b", b)
    if b >= block_table.shape[0]:
        raise ValueError(f"b must be in 0..{block_table.shape[0] - 1} (rows of block_table), got {b}")
    return b, int(cache_seqlens[b])


def token_row(block_table: torch.Tensor, cache_seqlens: torch.Tensor, b: int, t: int, page_size: int = 64) -> int:
    """Exercise 04.1: where token t of sequence b lives, as a row of the pool viewed as [num_blocks · page, 576].

    Its page is block_table[b, t // page] and its slot in that page t % page: row = page_id · page + t % page.
    Only the tokens a sequence holds have a place: t must be below cache_seqlens[b].
    """
    b, length = _table_and_lengths(block_table, cache_seqlens, b)
    t, page_size = _count("t", t), _count("page_size", page_size, 1)
    if t >= length:
        raise ValueError(f"t must be below cache_seqlens[{b}] = {length} (sequence {b} holds no token {t}), got {t}")
    return int(block_table[b, t // page_size]) * page_size + t % page_size


def pages_to_take(lengths: Sequence[int], new_tokens: int, page_size: int = 64) -> list[int]:
    """Exercise 04.2: the pages each sequence must take from the free list to append `new_tokens` tokens.

    A sequence of L tokens holds ceil(L / page) pages and needs ceil((L + T) / page): for 64-token pages, 65
    tokens hold 2 pages and one more token needs none, while 64 tokens hold 1 and one more needs a new page.
    """
    T, page_size = _count("new_tokens", new_tokens), _count("page_size", page_size, 1)
    lengths = [_count(f"lengths[{i}]", L) for i, L in enumerate(lengths)]
    return [math.ceil((L + T) / page_size) - math.ceil(L / page_size) for L in lengths]


def gather_sequence(k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                    b: int) -> torch.Tensor:
    """Exercise 04.3: the rows of sequence b, in order and contiguous: [cache_seqlens[b], d].

    k_cache [num_blocks, page, (1,) d]. Only the sequence's live pages are read (block_table[b, :ceil(L / page)]),
    so the sentinels past them are never followed, and only its first L rows are kept, so the NaN or stale rows
    past its length never appear.
    """
    b, length = _table_and_lengths(block_table, cache_seqlens, b)
    if not isinstance(k_cache, torch.Tensor) or k_cache.dim() not in (3, 4) or (k_cache.dim() == 4
                                                                                  and k_cache.shape[2] != 1):
        raise ValueError(f"k_cache must be a tensor [num_blocks, page, (1,) d], got "
                         f"{list(k_cache.shape) if isinstance(k_cache, torch.Tensor) else k_cache!r}")
    pool = k_cache.flatten(2) if k_cache.dim() == 4 else k_cache  # [num_blocks, page, d]
    page_size = pool.shape[1]
    pages = block_table[b, : math.ceil(length / page_size)].long()  # [n_pages]: the live pages only
    if pages.numel() and not (0 <= int(pages.min()) and int(pages.max()) < pool.shape[0]):
        raise ValueError(f"block_table[{b}] points outside the pool of {pool.shape[0]} pages: {pages.tolist()}")
    return pool[pages].flatten(0, 1)[:length]  # [n_pages · page, d] → [L, d]


__all__ = [
    "decode_steps", "prefill_and_decode", "decode_together", "decode_each_alone", "measured_cache_bytes",
    "decode_step_peak_bytes", "decode_step_times", "mha_cache_bytes", "max_cached_tokens", "decode_bytes_read",
    "latent_saving", "expand_latent_cache", "reexpansion_bytes", "absorb_query_nope", "latent_output_to_heads",
    "W_UQ", "fused_query_weight", "query_absorb_macs", "token_row", "pages_to_take", "gather_sequence",
]
