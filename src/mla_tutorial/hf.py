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

DeepSeek-V3's released weights are FP8 (float8_e4m3fn) with one float32 scale per 128×128 block in
`<name>.weight_scale_inv` (the block size is `quantization_config.weight_block_size` in config.json). They are
dequantized on load: weight[i, j] = fp8[i, j] · weight_scale_inv[i // 128, j // 128] (the last blocks of a row or
column may be partial), in bf16 unless `dtype=` says otherwise. An FP8 weight without its scale is an error naming it.
"""

from __future__ import annotations

import json
import math
import re
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


class CheckpointFileError(OSError):
    """A checkpoint file is missing, unreadable or not what its name says (a corrupt safetensors file, say)."""


#: FP8 block-scale suffix: `x.weight` (float8) is dequantized with `x.weight_scale_inv` (DeepSeek's naming).
SCALE_SUFFIX = "_scale_inv"
#: DeepSeek-V3's `quantization_config.weight_block_size`.
FP8_BLOCK = (128, 128)
FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                     "float8_e5m2fnuz") if hasattr(torch, name))

#: dtype names accepted as strings (`dtype="bf16"`), with or without a "torch." prefix.
DTYPE_NAMES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
               "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """None, a floating torch.dtype, or one of DTYPE_NAMES ("bf16", "torch.float32", …) → a torch.dtype (or None)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} is not a dtype name this loader knows; use one of "
                             f"{sorted(DTYPE_NAMES)} or a torch.dtype")
        return DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, a name such as 'bfloat16', or None, got "
                        f"{type(dtype).__name__} {dtype!r}")
    if not dtype.is_floating_point or dtype in FP8_DTYPES:
        raise TypeError(f"dtype must be a floating-point dtype the stages compute in (bf16, fp16, fp32, fp64), "
                        f"got {dtype}")
    return dtype


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] = FP8_BLOCK,
                   dtype: torch.dtype = torch.bfloat16, name: str = "weight") -> torch.Tensor:
    """An FP8 weight [out, in] with block scales [⌈out/bo⌉, ⌈in/bi⌉] → weight·scale of its block, in `dtype`.

    The product is formed in float32 (float64 for a float64 result) before the cast; edge blocks may be partial.
    """
    if weight.dim() != 2:
        raise CheckpointMismatchError(f"FP8 weight {name!r} must be 2-dim [out, in], got shape {list(weight.shape)}")
    rows, cols = weight.shape
    bo, bi = block
    want = [-(-rows // bo), -(-cols // bi)]
    if list(scale_inv.shape) != want:
        raise CheckpointMismatchError(f"{name + SCALE_SUFFIX!r} has shape {list(scale_inv.shape)}, expected {want} "
                                      f"(one scale per {bo}×{bi} block of {name!r}, shape {list(weight.shape)})")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    scale = scale_inv.to(compute).repeat_interleave(bo, 0)[:rows].repeat_interleave(bi, 1)[:, :cols]  # [out, in]
    return (weight.to(compute) * scale).to(dtype)


def _dequantize_state(weights: dict[str, torch.Tensor], prefix: str, block: tuple[int, int],
                      dtype: torch.dtype) -> list[str]:
    """Replace every FP8 weight of `weights` (names without prefix) by its dequantized value and drop its scale.
    Returns the problems (an FP8 weight without a scale, a scale of the wrong shape); leftover scales stay, to be
    reported as unexpected keys."""
    problems = []
    for name in [k for k, v in weights.items() if isinstance(v, torch.Tensor) and v.dtype in FP8_DTYPES]:
        scale = weights.get(name + SCALE_SUFFIX)
        if not isinstance(scale, torch.Tensor):
            problems.append(f"FP8 weight {prefix + name!r} ({weights[name].dtype}) has no block scale "
                            f"{prefix + name + SCALE_SUFFIX!r}: it cannot be dequantized")
            continue
        try:
            weights[name] = dequantize_fp8(weights[name], scale, block, dtype, prefix + name)
        except CheckpointMismatchError as err:
            problems.append(str(err))
            continue
        del weights[name + SCALE_SUFFIX]
    return problems


def _fp8_block(config: Any) -> tuple[int, int]:
    """`quantization_config.weight_block_size` of an HF config or config.json dict, else (128, 128)."""
    quant = config.get("quantization_config") if isinstance(config, Mapping) else \
        getattr(config, "quantization_config", None)
    size = quant.get("weight_block_size") if isinstance(quant, Mapping) else None
    if size is None:
        return FP8_BLOCK
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"quantization_config.weight_block_size must be two positive ints, got {size!r}")
    return int(size[0]), int(size[1])


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
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str or None, got {type(prefix).__name__} {prefix!r}")
        return prefix if prefix == "" or prefix.endswith(".") else prefix + "."
    _check_layer(layer)
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
            ids = sorted({int(m.group(1)) for p in found if (m := re.search(r"layers\.(\d+)\.self_attn\.$", p))})
            valid = (f"valid layers: {ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1))
                     else f"valid layers: {ids}") if ids else "no numbered layers"
            raise CheckpointMismatchError(f"layer={layer} is out of range ({valid}): no key ends with "
                                          f"'{wanted}{ANCHOR}'; attention prefixes found: {found[:8]}"
                                          f"{' …' if len(found) > 8 else ''}")
        found = matching
    if len(found) > 1:
        raise CheckpointMismatchError(f"the weights hold {len(found)} MLA attentions ({found[:4]}"
                                      f"{' …' if len(found) > 4 else ''}); pass layer= or prefix= to pick one")
    return found[0]


def _check_layer(layer: object) -> None:
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise TypeError(f"layer must be an int or None, got {type(layer).__name__} {layer!r}")


def _hint(name: str, module: MLAProjections) -> str:
    """A short explanation for an unexpected or missing attention weight name."""
    c = module.config
    if name.endswith(SCALE_SUFFIX):
        return (" (an FP8 block scale, but the weight it scales is missing or not FP8: FP8 weights, as in "
                "DeepSeek-V3's release, are dequantized on load with their scales)")
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
                              config: Any = None, *, fp8_block: tuple[int, int] = FP8_BLOCK) -> M:
    """Load one MLA attention's weights, named as in transformers, into a stage module; return the module.

    module_or_cls: a stage module (LatentMLA, AbsorbedMLA, …) to copy into, keeping its dtype and device; or a
        stage class, built from `config` (MLAConfig or HF config) with the weights' dtype and device.
    state_dict: bare attention names (`q_a_proj.weight`, … as `DeepseekV3Attention.state_dict()` gives),
        decoder-layer names (`self_attn.q_a_proj.weight`) or full-model names
        (`model.layers.{i}.self_attn.q_a_proj.weight`); other keys (MLPs, norms, other layers) are ignored.
    layer / prefix: which attention, when the state dict holds several (see `find_attention_prefix`).

    FP8 weights (float8 with a `<name>_scale_inv` block scale, fp8_block rows × columns per scale, DeepSeek-V3's
    release) are dequantized: into the module's dtype, or bf16 when a class is built from them.

    Raises CheckpointMismatchError listing every missing, unexpected or mis-shaped key with the full key name,
    the expected shape (with its formula in config fields) and the received one, and every FP8 weight without
    its scale.
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
            dtype = torch.bfloat16 if first.dtype in FP8_DTYPES else first.dtype
            module = module.to(device=first.device, dtype=dtype)
    elif isinstance(module_or_cls, MLAProjections):
        module = module_or_cls
    else:
        raise TypeError(f"module_or_cls must be an MLA stage module or class, got {type(module_or_cls).__name__}")

    problems = _dequantize_state(weights, p, fp8_block, next(module.parameters()).dtype)
    expected = module.state_dict()  # name → tensor; the RoPE buffer is not persistent, so weights only
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
        _check_layer(layer)
        if not 0 <= layer < len(layers):
            raise IndexError(f"layer={layer} is out of range: {type(obj).__name__} has {len(layers)} layers "
                             f"(valid layers: 0..{len(layers) - 1})")
        return _find_attention(layers[layer], None)
    raise TypeError(f"expected a DeepseekV3Attention / DeepseekV2Attention (a module with kv_a_proj_with_mqa), "
                    f"a decoder layer or a model, got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- safetensors
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointFileError(f"{path}: not a readable JSON file ({type(err).__name__}: {err})") from err


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    except FileNotFoundError as err:
        raise CheckpointFileError(f"{file}: no such checkpoint file") from err
    except Exception as err:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointFileError(f"{file}: not a readable safetensors file ({type(err).__name__}: {err})") from err


def _safetensors_files(path: Path) -> tuple[dict[str, Path], Path]:
    """key → file for a .safetensors file or a directory (sharded with an index, or plain files)."""
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        root = path
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index)
            weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointFileError(f"{index}: has no 'weight_map' object (key → shard file)")
            where = {k: path / f for k, f in weight_map.items()}
            for f in sorted(set(where.values())):
                if not f.is_file():
                    raise CheckpointFileError(f"{index} lists the shard {f.name}, but {f} does not exist")
            return where, root
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors file and no model.safetensors.index.json in {path}")
    else:
        raise FileNotFoundError(f"no such file or directory: {path}")
    where = {}
    for f in files:
        where.update(dict.fromkeys(_safetensors_keys(f), f))
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
    dtype: None keeps the stored dtype (bf16 for DeepSeek's releases; FP8 weights are dequantized to bf16), a
        torch.dtype or a name ("bfloat16", "fp32", …); device: where the module lives.
    FP8 weights with `<name>_scale_inv` block scales are dequantized (block size from config.json's
    `quantization_config.weight_block_size`, else 128×128). A missing, unreadable or corrupt file is a
    CheckpointFileError (an OSError) naming the file; a layer that is not in the checkpoint names the valid range.
    """
    from safetensors import safe_open

    dtype = resolve_dtype(dtype)
    _check_layer(layer)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__} {path!r}")
    where, root = _safetensors_files(Path(path))
    if config is None:
        config_file = root / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"config is None and there is no {config_file}; pass config=")
        config = _read_json(config_file)
    block = _fp8_block(config)
    config = mla_config(config)
    p = find_attention_prefix(where, layer, prefix)
    state = {}
    for f in sorted({where[k] for k in where if k.startswith(p)}):
        try:
            with safe_open(str(f), framework="pt", device=str(device)) as handle:
                state.update({k: handle.get_tensor(k) for k in handle.keys() if k.startswith(p)})
        except Exception as err:  # a truncated file fails here, after a readable header
            raise CheckpointFileError(f"{f}: could not read its tensors ({type(err).__name__}: {err})") from err
    weights = {k[len(p):]: v for k, v in state.items()}
    problems = _dequantize_state(weights, p, block, dtype or torch.bfloat16)
    if problems:
        raise CheckpointMismatchError(f"{len(problems)} problem(s) loading FP8 weights from {path}:\n  "
                                      + "\n  ".join(sorted(problems)))
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    return load_attention_state_dict(cls, {p + k: v for k, v in weights.items()}, prefix=p, config=config)


__all__ = ["CheckpointMismatchError", "CheckpointFileError", "from_transformers", "load_attention_state_dict",
           "load_safetensors", "find_attention_prefix", "mla_config", "dequantize_fp8", "resolve_dtype",
           "SHAPE_FORMULAS", "FP8_BLOCK", "SCALE_SUFFIX"]
