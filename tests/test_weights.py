"""Loading weights (issue 7): DeepSeek's FP8 checkpoints are dequantized on load; file errors name the file; a dtype
may be given by name; a layer out of range names the valid range.

The FP8 checkpoint is built by hand as DeepSeek's release is: every linear weight stored as float8_e4m3fn with one
float32 scale per 128×128 block in `<name>_scale_inv` (scale = block amax / 448, the largest e4m3 value; the last
blocks of a row or column are partial), layer norms unquantized in bf16. Loading must give back the float weight
within FP8's rounding error: e4m3 keeps 3 mantissa bits, so |Δ| ≤ 2^-4·|w| for normal values (half an ulp) and
2^-10·scale in the subnormal range, plus the bf16 rounding of the result (2^-8 relative).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("safetensors")
from safetensors.torch import save_file  # noqa: E402

from mla_tutorial import LatentMLA, MLAConfig, linear_init_  # noqa: E402
from mla_tutorial.hf import (  # noqa: E402
    CheckpointFileError,
    CheckpointMismatchError,
    dequantize_fp8,
    from_transformers,
    load_attention_state_dict,
    load_safetensors,
    resolve_dtype,
)

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
CONFIG = MLAConfig.tiny()  # kv_b_proj [1024, 512], q_b_proj [1024, 96], kv_a_proj_with_mqa [576, 256]: partial blocks


def quantize_fp8(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-style block quantization: (fp8 [out, in], scale_inv [⌈out/block⌉, ⌈in/block⌉] float32)."""
    rows, cols = w.shape
    scale = torch.empty(-(-rows // block), -(-cols // block), dtype=torch.float32)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = w[i * block : (i + 1) * block, j * block : (j + 1) * block].float()
            scale[i, j] = tile.abs().amax().clamp_min(1e-12) / E4M3_MAX
            q[i * block : (i + 1) * block, j * block : (j + 1) * block] = (tile / scale[i, j]).to(torch.float8_e4m3fn)
    return q, scale


def reference_module(seed: int = 0) -> LatentMLA:
    return linear_init_(LatentMLA(CONFIG).float(), std=0.1, seed=seed).requires_grad_(False)


def hf_config_json(block: int = 128) -> dict:
    c = CONFIG
    return {"model_type": "deepseek_v3", "hidden_size": c.hidden_size, "num_attention_heads": c.num_heads,
            "q_lora_rank": c.q_lora_rank, "kv_lora_rank": c.kv_lora_rank, "qk_nope_head_dim": c.qk_nope_head_dim,
            "qk_rope_head_dim": c.qk_rope_head_dim, "v_head_dim": c.v_head_dim, "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "rope_scaling": {"type": "yarn", "factor": c.rope_factor, "beta_fast": c.beta_fast,
                             "beta_slow": c.beta_slow, "mscale": c.mscale, "mscale_all_dim": c.mscale_all_dim,
                             "original_max_position_embeddings": c.original_max_position_embeddings},
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [block, block]}}


def fp8_state(modules: list[LatentMLA], block: int = 128) -> dict[str, torch.Tensor]:
    """Full-model names; 2-dim weights as FP8 + block scales, the rest (layer norms) in bf16."""
    state = {}
    for layer, module in enumerate(modules):
        for name, w in module.state_dict().items():
            key = f"model.layers.{layer}.self_attn.{name}"
            if w.dim() == 2:
                state[key], state[key + "_scale_inv"] = quantize_fp8(w, block)
            else:
                state[key] = w.to(torch.bfloat16)
    state["model.embed_tokens.weight"] = torch.randn(8, CONFIG.hidden_size).to(torch.bfloat16)
    return state


@pytest.fixture
def checkpoint(tmp_path):
    """A two-layer FP8 checkpoint directory (model.safetensors + config.json) and its float modules."""
    modules = [reference_module(0), reference_module(1)]
    save_file(fp8_state(modules), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json()))
    return tmp_path, modules


def fp8_error_bound(w: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Per element: e4m3 rounding (2^-4 relative, 2^-10·scale absolute below the normal range) then bf16 (2^-8)."""
    _, scale = quantize_fp8(w, block)
    s = scale.repeat_interleave(block, 0)[: w.shape[0]].repeat_interleave(block, 1)[:, : w.shape[1]]
    return (2.0**-4 + 2.0**-8 * (1 + 2.0**-4)) * w.abs() + 2.0**-10 * s


# ------------------------------------------------------------------ FP8 dequantized on load
def test_fp8_checkpoint_is_dequantized_within_fp8_error(checkpoint):
    path, modules = checkpoint
    loaded = load_safetensors(path, layer=1)
    assert next(loaded.parameters()).dtype == torch.bfloat16  # FP8 weights come out in bf16 by default
    for name, w in modules[1].state_dict().items():
        got = loaded.state_dict()[name].float()
        if w.dim() == 2:
            err = (got - w).abs()
            assert (err <= fp8_error_bound(w)).all(), f"{name}: worst error {err.max():.3g}"
            assert err.max() > 0, f"{name} should carry FP8's rounding"
        else:
            assert torch.equal(got, w.to(torch.bfloat16).float()), name
    x = torch.randn(2, 5, CONFIG.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = modules[1](x)  # the float weights
        out, _ = loaded.float()(x)  # FP8 → bf16 weights
        exact, _ = load_safetensors(path, layer=1, dtype="float32")(x)  # FP8 → fp32 weights
    # measured on 4 seeds: FP8 vs float 0.060-0.064 (e4m3's 3 mantissa bits); bf16 vs fp32 dequantized 0.0034-0.0037
    assert float((out - ref).norm() / ref.norm()) < 0.1
    assert float((out - exact).norm() / exact.norm()) < 0.01


def test_fp8_dequantization_is_exact_in_float64(checkpoint):
    """weight = fp8 value × the scale of its 128×128 block, nothing else (exact in float64)."""
    path, modules = checkpoint
    loaded = load_safetensors(path, layer=0, dtype="float64")
    w = modules[0].kv_a_proj_with_mqa.weight  # [576, 256]: 4.5 blocks of rows
    q, scale = quantize_fp8(w)
    expected = q.double() * scale.double().repeat_interleave(128, 0)[:576].repeat_interleave(128, 1)[:, :256]
    assert torch.equal(loaded.kv_a_proj_with_mqa.weight, expected)
    assert torch.equal(dequantize_fp8(q, scale, dtype=torch.float64), expected)


def test_block_size_comes_from_config_json(tmp_path):
    modules = [reference_module(3)]
    save_file(fp8_state(modules, block=64), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(block=64)))
    loaded = load_safetensors(tmp_path, layer=0)
    w = modules[0].kv_b_proj.weight
    assert ((loaded.kv_b_proj.weight.float() - w).abs() <= fp8_error_bound(w, 64)).all()
    with pytest.raises(CheckpointMismatchError, match=r"kv_b_proj.weight_scale_inv' has shape \[16, 8\], expected "
                                                      r"\[8, 4\] \(one scale per 128×128 block"):
        load_safetensors(tmp_path, CONFIG, layer=0)  # no config.json read: the default 128×128 blocks


def test_state_dict_with_fp8_weights_loads_into_a_module():
    module = reference_module(4)
    state = {k.removeprefix("model.layers.0.self_attn."): v for k, v in fp8_state([module]).items()
             if k.startswith("model.layers.0.")}
    target = LatentMLA(CONFIG).float()
    load_attention_state_dict(target, state)
    w = module.o_proj.weight
    assert target.o_proj.weight.dtype == torch.float32
    assert ((target.o_proj.weight - w).abs() <= fp8_error_bound(w)).all()
    built = load_attention_state_dict(LatentMLA, state, config=CONFIG)  # a class: bf16, not FP8
    assert built.o_proj.weight.dtype == torch.bfloat16


def test_missing_or_misshaped_scale_names_the_weight(tmp_path):
    state = fp8_state([reference_module(5)])
    del state["model.layers.0.self_attn.kv_b_proj.weight_scale_inv"]
    state["model.layers.0.self_attn.o_proj.weight_scale_inv"] = torch.ones(3, 3)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        load_safetensors(tmp_path / "model.safetensors", CONFIG, layer=0)
    message = str(err.value)
    assert ("FP8 weight 'model.layers.0.self_attn.kv_b_proj.weight' (torch.float8_e4m3fn) has no block scale "
            "'model.layers.0.self_attn.kv_b_proj.weight_scale_inv'") in message
    assert "'model.layers.0.self_attn.o_proj.weight_scale_inv' has shape [3, 3], expected [2, 4]" in message
    bare = {k.removeprefix("model.layers.0.self_attn."): v for k, v in state.items()}
    with pytest.raises(CheckpointMismatchError, match="kv_b_proj.weight' .* has no block scale"):
        load_attention_state_dict(LatentMLA(CONFIG), bare)


# ------------------------------------------------------------------ files
def test_corrupt_or_truncated_safetensors_file_names_the_file(checkpoint, tmp_path):
    path, _ = checkpoint
    good = (path / "model.safetensors").read_bytes()
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    corrupt = bad_dir / "model.safetensors"
    corrupt.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CheckpointFileError, match=rf"{corrupt}: not a readable safetensors file") as err:
        load_safetensors(corrupt, CONFIG)
    assert isinstance(err.value, OSError)
    corrupt.write_bytes(good[: len(good) // 2])  # the header survives, the data does not
    with pytest.raises(CheckpointFileError, match=str(corrupt)):
        load_safetensors(corrupt, CONFIG, layer=1)


def test_missing_files_and_bad_json_name_the_file(checkpoint, tmp_path):
    path, _ = checkpoint
    with pytest.raises(FileNotFoundError, match="no such file or directory: .*nowhere"):
        load_safetensors(tmp_path / "nowhere")
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFileError, match=rf"{path / 'config.json'}: not a readable JSON file"):
        load_safetensors(path)
    shards = tmp_path / "sharded"
    shards.mkdir()
    index = shards / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"model.layers.0.self_attn.o_proj.weight": "model-00001.safetensors"}}))
    with pytest.raises(CheckpointFileError, match=r"model.safetensors.index.json lists the shard "
                                                  r"model-00001.safetensors, but .* does not exist"):
        load_safetensors(shards, CONFIG)
    index.write_text("[1, 2]")
    with pytest.raises(CheckpointFileError, match="has no 'weight_map' object"):
        load_safetensors(shards, CONFIG)


# ------------------------------------------------------------------ dtype and layer
@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("torch.float32", torch.float32),
                                        ("float64", torch.float64), ("Half", torch.float16)])
def test_dtype_by_name(checkpoint, name, dtype):
    path, _ = checkpoint
    assert resolve_dtype(name) is dtype
    assert load_safetensors(path, layer=0, dtype=name).o_proj.weight.dtype == dtype


@pytest.mark.parametrize("dtype,error,match", [
    ("int8", ValueError, r"dtype 'int8' is not a dtype name this loader knows; use one of \['bf16'"),
    ("bfloat", ValueError, "dtype 'bfloat' is not a dtype name"),
    (torch.int32, TypeError, "dtype must be a floating-point dtype .* got torch.int32"),
    (torch.float8_e4m3fn, TypeError, "dtype must be a floating-point dtype the stages compute in"),
    (3, TypeError, "dtype must be a torch.dtype, a name such as 'bfloat16', or None, got int 3"),
])
def test_bad_dtype_is_refused_before_reading(checkpoint, dtype, error, match):
    path, _ = checkpoint
    with pytest.raises(error, match=match):
        load_safetensors(path, dtype=dtype)


@pytest.mark.parametrize("layer", [2, 61, -1])
def test_layer_out_of_range_names_the_valid_range(checkpoint, layer):
    path, _ = checkpoint
    with pytest.raises(CheckpointMismatchError, match=rf"layer={layer} is out of range \(valid layers: 0..1\)"):
        load_safetensors(path, layer=layer)


def test_layer_must_be_an_int(checkpoint):
    path, _ = checkpoint
    with pytest.raises(TypeError, match="layer must be an int or None, got bool True"):
        load_safetensors(path, layer=True)
    with pytest.raises(TypeError, match="layer must be an int or None, got str '0'"):
        load_safetensors(path, layer="0")


def test_from_transformers_layer_out_of_range_names_the_valid_range():
    class Attention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kv_a_proj_with_mqa = torch.nn.Linear(2, 2)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attention()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(), Layer(), Layer()])

    for layer in (3, -1):
        with pytest.raises(IndexError, match=rf"layer={layer} is out of range: Model has 3 layers \(valid layers: "
                                             r"0..2\)"):
            from_transformers(Model(), layer=layer)
