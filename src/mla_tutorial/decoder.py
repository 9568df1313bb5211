"""A tiny decoder-only language model around any attention stage, to decode greedily end to end.

Every stage file checks one attention layer against the previous one. This file checks what a user sees: put
the same weights in a small model, generate tokens greedily with each stage's cache, and get the same tokens.
The layout is DeepSeek's (and Llama's), pre-norm with residuals, minus the mixture of experts:

    ids [B, T] → embed_tokens → N × ( x + self_attn(input_layernorm(x))            # any stage 0–3
                                      x + mlp(post_attention_layernorm(x)) )       # SwiGLU
               → norm → lm_head → logits [B, T, vocab]

Generation is prefill (the whole prompt in one call, which fills each layer's cache) followed by one call per
new token that reads and extends the caches. Attribute names follow transformers' DeepseekV3 model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import MLAConfig
from .layers import MLAProjections, RMSNorm, linear_init_
from .step import one_step


class MLP(nn.Module):
    """SwiGLU feed-forward as in DeepSeek's dense layers: down(silu(gate(x)) · up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # [B, T, hidden]


class DecoderLayer(nn.Module):
    """Pre-norm block: attention (one stage of the ladder) and an MLP, each added to the residual stream."""

    def __init__(self, config: MLAConfig, stage_cls: type[MLAProjections], intermediate_size: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = stage_cls(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, cache: object = None) -> tuple[torch.Tensor, object]:
        """x [B, T, hidden] and this layer's cache (None at first) → (x [B, T, hidden], the extended cache)."""
        attn_out, cache = self.self_attn(self.input_layernorm(x), cache)
        x = x + attn_out
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class TinyDecoder(nn.Module):
    """A small decoder-only LM whose attention layers are all one stage class (NaiveMHA … PagedMLA).

    `TinyDecoder.from_previous(decoder, stage_cls)` swaps every layer's attention for another stage with the
    same weights; `generate_greedy` decodes with the stages' caches.
    """

    def __init__(self, config: MLAConfig, stage_cls: type[MLAProjections], num_layers: int = 2,
                 vocab_size: int = 256, intermediate_size: int | None = None):
        super().__init__()
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, MLAProjections)):
            raise TypeError(f"stage_cls must be an MLA stage class (e.g. NaiveMHA), got {stage_cls!r}")
        for name, value in (("num_layers", num_layers), ("vocab_size", vocab_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.config = config
        self.stage_cls = stage_cls
        self.vocab_size = vocab_size
        self.intermediate_size = intermediate_size or 2 * config.hidden_size
        self.embed_tokens = nn.Embedding(vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, stage_cls, self.intermediate_size)
                                    for _ in range(num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, vocab_size, bias=False)

    @classmethod
    def from_previous(cls, decoder: TinyDecoder, stage_cls: type[MLAProjections]) -> TinyDecoder:
        """The same model with every attention layer rebuilt as `stage_cls`; all weights copied, same dtype/device.

        Every stage has the same parameter names (transformers' DeepseekV3Attention ones), so the whole state
        dict carries over unchanged.
        """
        if not isinstance(decoder, TinyDecoder):
            raise TypeError(f"decoder must be a TinyDecoder, got {type(decoder).__name__}")
        weight = decoder.lm_head.weight
        new = cls(decoder.config, stage_cls, len(decoder.layers), decoder.vocab_size, decoder.intermediate_size)
        new = new.to(device=weight.device, dtype=weight.dtype)
        new.load_state_dict(decoder.state_dict())
        return new.train(decoder.training)

    def init_weights_(self, std: float = 0.02, seed: int | None = None) -> TinyDecoder:
        """Seeded weights: every Linear ~ N(0, std²), RMSNorm ~ 1 + N(0, 0.1²) (linear_init_), embeddings ~ N(0, 1)."""
        linear_init_(self, std, seed)
        gen = torch.Generator().manual_seed(seed + 1) if seed is not None else None
        with torch.no_grad():
            self.embed_tokens.weight.copy_(torch.randn(self.embed_tokens.weight.shape, generator=gen,
                                                       dtype=torch.float64))
        return self

    def new_caches(self, batch_size: int, max_seq_len: int) -> list:
        """One empty in-place cache per layer, with room for `max_seq_len` tokens of `batch_size` sequences.

        For stages whose caches are written in place (AbsorbedMLA: StaticLatentCache; PagedMLA, TritonMLA:
        PagedLatentCache), so that a decode step can be captured in a CUDA graph (`mla_tutorial.graphs`).
        """
        if not hasattr(self.layers[0].self_attn, "new_cache"):
            raise TypeError(f"{self.stage_cls.__name__} grows its cache by concatenation and has no in-place cache; "
                            f"use AbsorbedMLA, PagedMLA or TritonMLA")
        return [layer.self_attn.new_cache(batch_size, max_seq_len) for layer in self.layers]

    def forward(self, input_ids: torch.Tensor, caches: list | None = None) -> tuple[torch.Tensor, list]:
        """input_ids [B, T] (the next T tokens of each sequence) and one cache per layer (None at first) →
        (logits [B, T, vocab], the extended caches)."""
        if caches is None:
            caches = [None] * len(self.layers)
        if len(caches) != len(self.layers):
            raise ValueError(f"caches must hold one cache per layer ({len(self.layers)}), got {len(caches)}")
        x = self.embed_tokens(input_ids)  # [B, T, hidden]
        new_caches = []
        with one_step():  # the layers share what only the lengths decide (stages 4-5: the kernel's schedule)
            for layer, cache in zip(self.layers, caches, strict=True):
                x, cache = layer(x, cache)  # [B, T, hidden]
                new_caches.append(cache)
        return self.lm_head(self.norm(x)), new_caches  # [B, T, vocab]

    @torch.no_grad()
    def generate_greedy(self, prompt_ids: torch.Tensor, max_new_tokens: int,
                        return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """prompt_ids [B, T] → ids [B, T + max_new_tokens]: the prompt, then the most likely token at each step.

        One prefill call for the prompt, then one call per new token, each attending through the layers' caches.
        With return_logits, also returns the logits each new token was picked from, [B, max_new_tokens, vocab].
        """
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0 \
                or prompt_ids.dtype not in (torch.int32, torch.int64):
            got = f"{list(prompt_ids.shape)} {prompt_ids.dtype}" if isinstance(prompt_ids, torch.Tensor) \
                else type(prompt_ids).__name__
            raise ValueError(f"prompt_ids must be an integer tensor [batch, T ≥ 1], got {got}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
        ids, step_logits = prompt_ids, []
        logits, caches = self(prompt_ids)  # prefill: [B, T, vocab]
        for step in range(max_new_tokens):
            step_logits.append(logits[:, -1])  # [B, vocab]
            next_ids = logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1]
            ids = torch.cat([ids, next_ids], dim=1)  # [B, T + step + 1]
            if step + 1 < max_new_tokens:
                logits, caches = self(next_ids, caches)  # decode one token: [B, 1, vocab]
        if not return_logits:
            return ids
        empty = logits.new_zeros(ids.shape[0], 0, self.vocab_size)
        return ids, torch.stack(step_logits, dim=1) if step_logits else empty  # [B, max_new_tokens, vocab]


__all__ = ["MLP", "DecoderLayer", "TinyDecoder"]
