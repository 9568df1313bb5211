"""Real models: load DeepSeek-V2/V3 attention weights from transformers modules, state dicts and safetensors.

Our stages use transformers' `DeepseekV3Attention` attribute names, so a checkpoint's attention weights load
without renaming once the layer's prefix (`model.layers.{i}.self_attn.`) is stripped. Paper symbol → HF name
(DeepSeek-V2 paper, arXiv:2405.04434, eqs. 9–19), with the weight shape nn.Linear stores ([out, in]):

    paper                HF name (under model.layers.{i}.self_attn.)   weight shape
    W_DQ                 q_a_proj                  [d'_c, d]                   query down-projection → c_Q
    (RMSNorm of c_Q)     q_a_layernorm             [d'_c]
    W_UQ and W_QR        q_b_proj                  [H·(d_h + d^R_h), d'_c]     viewed [H, d_h + d^R_h, d'_c]:
                                                                               rows 0…d_h−1 of each head are
                                                                               W_UQ, the last d^R_h are W_QR
    (no c_Q, V2-Lite)    q_proj                    [H·(d_h + d^R_h), d]        when q_lora_rank is None
    W_DKV and W_KR       kv_a_proj_with_mqa        [d_c + d^R_h, d]            rows 0…d_c−1: W_DKV (→ c_KV);
                                                                               last d^R_h: W_KR (→ shared k_rope)
    (RMSNorm of c_KV)    kv_a_layernorm            [d_c]
    W_UK and W_UV        kv_b_proj                 [H·(d_h + d_v), d_c]        viewed [H, d_h + d_v, d_c]:
                                                                               rows 0…d_h−1 W_UK, the rest W_UV
    W_O                  o_proj                    [d, H·d_v]

What transformers does that matters for exact agreement (transformers 5.x, `modeling_deepseek_v3.py` and
`modeling_deepseek_v2.py`):
- RoPE layout. V2 rotates interleaved pairs (x0, x1), (x2, x3)… through complex numbers. V3 does the same when
  `rope_interleave=True` (its default, and what DeepSeek's checkpoints need) but writes the result
  de-interleaved (all rotated evens, then all odds); with `rope_interleave=False` it rotates (x_i, x_{i+d/2}).
  q and k are permuted alike, so scores, and the layer's output, do not depend on that; only the cached
  k_rope columns come out in a different order from ours.
- YaRN. cos/sin are multiplied by mscale(s, mscale)/mscale(s, mscale_all_dim) (1 for all DeepSeek releases),
  the softmax scale by mscale(s, mscale_all_dim)²: see `MLAConfig.softmax_scale` and `rope.rope_inv_freq`.
- Precision. The q/kv RMSNorms always compute in float32 (and use eps 1e-6, not `rms_norm_eps`), V2's RoPE runs
  in complex64, the eager softmax in float32, and cos/sin come from float32 angles. So a float64 transformers
  model agrees with ours to ~1e-7, not 1e-15 (tests/test_hf_compat.py shows where the difference comes from).
- Cache. transformers caches the normalised latent c_KV [B, 1, S, d_c] and the rotated k_rope [B, 1, S, d^R_h]
  per layer and re-expands them through kv_b_proj at every step: the same work as our stage 1.

Loading from the Hub, for example DeepSeek-V2-Lite's first layer (weights in bf16):

    from mla_tutorial.hf import load_safetensors
    attn = load_safetensors("path/to/DeepSeek-V2-Lite", layer=0)    # reads config.json and the index

DeepSeek-V3's released weights are FP8 with block scales (`*.weight_scale_inv`); dequantize them to bf16 first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import torch
from torch import nn

from .config import MLAConfig
from .layers import MLAProjections
from .stage1_latent import LatentMLA

M = TypeVar("M", bound=MLAProjections)

#: Every MLA attention layer has this weight (hidden → d_c + d^R_h); it marks where an attention's keys start.
ANCHOR = "kv_a_proj_with_mqa.weight"

#: Each weight's shape in MLAConfig's field names, for error messages.
SHAPE_FORMULAS = {
    "q_proj.weight": "[num_heads·(qk_nope_head_dim + qk_rope_head_dim), hidden_size]",
    "q_a_proj.weight": "[q_lora_rank, hidden_size]",
    "q_a_layernorm.weight": "[q_lora_rank]",
    "q_b_proj.weight": "[num_heads·(qk_nope_head_dim + qk_rope_head_dim), q_lora_rank]",
    "kv_a_proj_with_mqa.weight": "[kv_lora_rank + qk_rope_head_dim, hidden_size]",
    "kv_a_layernorm.weight": "[kv_lora_rank]",
    "kv_b_proj.weight": "[num_heads·(qk_nope_head_dim + v_head_dim), kv_lora_rank]",
    "o_proj.weight": "[hidden_size, num_heads·v_head_dim]",
}


class CheckpointMismatchError(ValueError):
    """The weights offered do not fit the module: keys missing, unexpected, or shaped differently."""


# ---------------------------------------------------------------------------------------------- configs
def mla_config(config: Any) -> MLAConfig:
    """An MLAConfig from an MLAConfig (returned as is), a transformers config, or a config.json dict."""
    if isinstance(config, MLAConfig):
        return config
    if isinstance(config, Mapping):
        config = SimpleNamespace(**config)
    if not hasattr(config, "kv_lora_rank"):
        raise TypeError(f"config must be an MLAConfig or a DeepseekV2/V3 config (with kv_lora_rank), "
                        f"got {type(config).__name__}")
    if getattr(config, "attention_bias", False):
        raise ValueError("the HF config has attention_bias=True; MLA stages have no biases (no DeepSeek "
                         "checkpoint uses them)")
    return MLAConfig.from_hf(config)


# ---------------------------------------------------------------------------------------------- names
def find_attention_prefix(keys: Iterable[str], layer: int | None = None, prefix: str | None = None) -> str:
    """The prefix in front of one MLA attention's weight names among `keys`.

    `prefix` given: returned as is (a trailing "." added). Otherwise every key ending in `kv_a_proj_with_mqa.weight`
    marks one attention: "" for bare attention names, "self_attn." for a decoder layer,
    "model.layers.3.self_attn." for a full model. `layer` picks the one under `layers.{layer}.self_attn.`; a lone
    attention stored under bare names is accepted whatever `layer` says (it has no layer number).
    """
    if prefix is not None:
        return prefix if prefix == "" or prefix.endswith(".") else prefix + "."
    found = sorted({k[: -len(ANCHOR)] for k in keys
                    if k.endswith(ANCHOR) and (k == ANCHOR or k[-len(ANCHOR) - 1] == ".")})
    if not found:
        raise CheckpointMismatchError(f"no MLA attention weights found: no key ends with {ANCHOR!r}")
    if layer is not None:
        wanted = f"layers.{layer}.self_attn."
        matching = [p for p in found if p.endswith(wanted)]
        if not matching and found == [""]:
            return ""
        if not matching:
            raise CheckpointMismatchError(f"no attention weights for layer={layer} (no key ends with "
                                          f"'{wanted}{ANCHOR}'); attention prefixes found: {found[:8]}"
                                          f"{' …' if len(found) > 8 else ''}")
        found = matching
    if len(found) > 1:
        raise CheckpointMismatchError(f"the weights hold {len(found)} MLA attentions ({found[:4]}"
                                      f"{' …' if len(found) > 4 else ''}); pass layer= or prefix= to pick one")
    return found[0]


def _hint(name: str, module: MLAProjections) -> str:
    """A short explanation for an unexpected or missing attention weight name."""
    c = module.config
    if name.endswith("weight_scale_inv"):
        return " (an FP8 block-quantized checkpoint, like DeepSeek-V3's release: dequantize it to bf16 first)"
    if name.endswith(".bias"):
        return " (MLA has no biases; the checkpoint's attention_bias must be False)"
    if name.split(".")[0] in ("q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj"):
        if c.q_lora_rank is None:
            return " (config has q_lora_rank=None, i.e. one q_proj; the weights use q_a_proj/q_b_proj)"
        return (f" (config has q_lora_rank={c.q_lora_rank}, i.e. q_a_proj/q_b_proj; the weights use one "
                f"q_proj: set q_lora_rank=None)")
    return ""


# ---------------------------------------------------------------------------------------------- loading
def load_attention_state_dict(module_or_cls: M | type[M], state_dict: Mapping[str, torch.Tensor],
                              layer: int | None = None, prefix: str | None = None,
                              config: Any = None) -> M:
    """Load one MLA attention's weights, named as in transformers, into a stage module; return the module.

    module_or_cls: a stage module (LatentMLA, AbsorbedMLA, …) to copy into, keeping its dtype and device; or a
        stage class, built from `config` (MLAConfig or HF config) with the weights' dtype and device.
    state_dict: bare attention names (`q_a_proj.weight`, … as `DeepseekV3Attention.state_dict()` gives),
        decoder-layer names (`self_attn.q_a_proj.weight`) or full-model names
        (`model.layers.{i}.self_attn.q_a_proj.weight`); other keys (MLPs, norms, other layers) are ignored.
    layer / prefix: which attention, when the state dict holds several (see `find_attention_prefix`).

    Raises CheckpointMismatchError listing every missing, unexpected or mis-shaped key with the full key name,
    the expected shape (with its formula in config fields) and the received one.
    """
    p = find_attention_prefix(state_dict.keys(), layer, prefix)
    weights = {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
    if isinstance(module_or_cls, type):
        if not issubclass(module_or_cls, MLAProjections):
            raise TypeError(f"module_or_cls must be an MLA stage module or class, got {module_or_cls.__name__}")
        if config is None:
            raise TypeError("config is required when module_or_cls is a class (MLAConfig or HF config)")
        first = weights.get(ANCHOR)
        module = module_or_cls(mla_config(config))
        if isinstance(first, torch.Tensor):
            module = module.to(device=first.device, dtype=first.dtype)
    elif isinstance(module_or_cls, MLAProjections):
        module = module_or_cls
    else:
        raise TypeError(f"module_or_cls must be an MLA stage module or class, got {type(module_or_cls).__name__}")

    expected = module.state_dict()  # name → tensor; the RoPE buffer is not persistent, so weights only
    problems = []
    for name, want in expected.items():
        if name not in weights:
            problems.append(f"missing {p + name!r}: expected shape {list(want.shape)} = "
                            f"{SHAPE_FORMULAS.get(name, '?')}{_hint(name, module)}")
        elif not isinstance(weights[name], torch.Tensor):
            problems.append(f"{p + name!r} is a {type(weights[name]).__name__}, expected a tensor of shape "
                            f"{list(want.shape)}")
        elif weights[name].shape != want.shape:
            problems.append(f"{p + name!r} has shape {list(weights[name].shape)}, expected {list(want.shape)} = "
                            f"{SHAPE_FORMULAS.get(name, '?')} with {_config_summary(module.config)}")
    for name in weights.keys() - expected.keys():
        problems.append(f"unexpected {p + name!r} (shape {list(getattr(weights[name], 'shape', []))}): "
                        f"{type(module).__name__} has no such weight{_hint(name, module)}")
    if problems:
        raise CheckpointMismatchError(f"{len(problems)} problem(s) loading MLA attention weights into "
                                      f"{type(module).__name__}:\n  " + "\n  ".join(sorted(problems)))
    with torch.no_grad():
        module.load_state_dict({name: weights[name] for name in expected})
    return module


def _config_summary(c: MLAConfig) -> str:
    return (f"hidden_size={c.hidden_size}, num_heads={c.num_heads}, q_lora_rank={c.q_lora_rank}, "
            f"kv_lora_rank={c.kv_lora_rank}, qk_nope_head_dim={c.qk_nope_head_dim}, "
            f"qk_rope_head_dim={c.qk_rope_head_dim}, v_head_dim={c.v_head_dim}")


def from_transformers(attn: nn.Module, config: MLAConfig | None = None, layer: int | None = None,
                      cls: type[M] = LatentMLA) -> M:
    """A stage module (LatentMLA by default) with the weights, config, dtype, device and mode of a transformers
    `DeepseekV3Attention` / `DeepseekV2Attention`.

    `attn` may also be a decoder layer (its `self_attn` is used) or a model (`layer` picks `layers[layer]`).
    The config comes from `attn.config` through `MLAConfig.from_hf` unless given. The result computes what the
    transformers module computes for the same hidden states: positions 0… for a fresh cache, causal mask.
    """
    attn = _find_attention(attn, layer)
    hf_config = getattr(attn, "config", None)
    if config is None:
        if hf_config is None:
            raise TypeError(f"{type(attn).__name__} has no .config; pass config= (an MLAConfig)")
        config = mla_config(hf_config)
        config = config.replace(rms_norm_eps=float(attn.kv_a_layernorm.variance_epsilon))
        if type(attn).__name__.startswith("DeepseekV2"):
            config = config.replace(rope_interleave=True)  # V2's complex-number RoPE: always interleaved pairs
    scaling = getattr(attn, "scaling", None)
    if scaling is not None and not math.isclose(scaling, config.softmax_scale, rel_tol=1e-12):
        raise ValueError(f"softmax scale mismatch: {type(attn).__name__}.scaling = {scaling!r} but "
                         f"config.softmax_scale = {config.softmax_scale!r} (check rope_type, rope_factor, "
                         f"mscale_all_dim)")
    weight = attn.kv_a_proj_with_mqa.weight
    module = cls(config).to(device=weight.device, dtype=weight.dtype)
    load_attention_state_dict(module, attn.state_dict())
    return module.train(attn.training)


def _find_attention(obj: nn.Module, layer: int | None) -> nn.Module:
    """The MLA attention inside obj: obj itself, obj.self_attn, or (model.)layers[layer].self_attn."""
    if hasattr(obj, "kv_a_proj_with_mqa"):
        return obj
    if hasattr(obj, "self_attn"):
        return _find_attention(obj.self_attn, None)
    layers = getattr(obj, "layers", None) or getattr(getattr(obj, "model", None), "layers", None)
    if layers is not None:
        if layer is None:
            raise TypeError(f"{type(obj).__name__} has {len(layers)} layers; pass layer= to pick one")
        return _find_attention(layers[layer], None)
    raise TypeError(f"expected a DeepseekV3Attention / DeepseekV2Attention (a module with kv_a_proj_with_mqa), "
                    f"a decoder layer or a model, got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- safetensors
def _safetensors_files(path: Path) -> tuple[dict[str, Path], Path]:
    """key → file for a .safetensors file or a directory (sharded with an index, or plain files)."""
    from safetensors import safe_open

    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        root = path
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {k: path / f for k, f in weight_map.items()}, root
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file and no model.safetensors.index.json in {path}")
    else:
        raise FileNotFoundError(f"no such file or directory: {path}")
    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            where.update(dict.fromkeys(handle.keys(), f))
    return where, root


def load_safetensors(path: str | Path, config: Any = None, layer: int | None = 0, *, prefix: str | None = None,
                     dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                     cls: type[M] = LatentMLA) -> M:
    """One attention layer of a safetensors checkpoint as a stage module (LatentMLA by default).

    path: a .safetensors file, or a checkpoint directory (sharded with `model.safetensors.index.json`, or not).
        Only the chosen layer's tensors are read.
    config: MLAConfig, transformers config or config.json dict; None reads `config.json` next to the weights.
    layer / prefix: which attention (`model.layers.{layer}.self_attn.` by default; a file holding one attention
        under bare names loads whatever `layer` says).
    dtype: None keeps the stored dtype (bf16 for DeepSeek's releases); device: where the module lives.
    """
    from safetensors import safe_open

    where, root = _safetensors_files(Path(path))
    if config is None:
        config_file = root / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"config is None and there is no {config_file}; pass config=")
        config = json.loads(config_file.read_text())
    config = mla_config(config)
    p = find_attention_prefix(where, layer, prefix)
    state = {}
    for f in sorted({where[k] for k in where if k.startswith(p)}):
        with safe_open(str(f), framework="pt", device=str(device)) as handle:
            state.update({k: handle.get_tensor(k) for k in handle.keys() if k.startswith(p)})
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    return load_attention_state_dict(cls, state, prefix=p, config=config)


__all__ = ["CheckpointMismatchError", "from_transformers", "load_attention_state_dict", "load_safetensors",
           "find_attention_prefix", "mla_config", "SHAPE_FORMULAS"]
