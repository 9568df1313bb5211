"""Offline check (no GPU) that wgmma's register A operand can be built from an FP8 page's e4m3 words with no data
movement: the groundwork of the register idea at 64 and 128 heads (docs/results/v5_notes.md, "A plan for 64 and
128 heads"). Two kernels, compiled for sm_90a with the Triton the GPU machine has (3.6):

    /tmp/t36/bin/python scripts/wgmma_register_operands_probe.py

  * S^T = K·Q^T: K [64 keys, 64 columns] dequantized from each thread's words (columns permuted as in
    kernels/v5_fp8_reg.py) into the A operand, Q^T from shared memory;
  * O^T = V^T·P^T: V^T [128 columns, 64 keys] from pairs of keys' words (_E4M3_PAIRS), P^T from shared memory.

Each compiles only if Gluon proves the reshape from the words to the operand a relabelling
(convert_layout(assert_trivial=True)); it prints each operand's linear layout, the shared memory and the wgmma count.
The kernels are probes: never launched, their results meaningless.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402
from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma, warpgroup_mma_wait  # noqa: E402

from mla_tutorial.kernels.v5_fp8_reg import _E4M3_PAIRS, _E4M3X4_F16  # noqa: E402


@gluon.jit
def _times_b_tile(a, b_ptr, out_ptr, M: gl.constexpr, acc_l: gl.constexpr, num_warps: gl.constexpr):
    """a (the register A operand, [M, 64]) times a [64, 64] tile of a's dtype read into shared memory, by wgmma;
    stored."""
    smem_l: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    ld: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, ld))
    c = gl.arange(0, 64, layout=gl.SliceLayout(0, ld))
    b_smem = gl.allocate_shared_memory(a.dtype, [64, 64], smem_l,
                                       gl.load(b_ptr + r[:, None] * 64 + c[None, :]).to(a.dtype))
    acc = warpgroup_mma(a, b_smem, gl.zeros([M, 64], gl.float32, layout=acc_l), is_async=True)
    acc = warpgroup_mma_wait(0, deps=[acc])
    ro = gl.arange(0, M, layout=gl.SliceLayout(1, acc_l))
    co = gl.arange(0, 64, layout=gl.SliceLayout(0, acc_l))
    gl.store(out_ptr + ro[:, None] * 64 + co[None, :], acc)


@gluon.jit
def _k_operand(w_ptr, q_ptr, out_ptr, num_warps: gl.constexpr):
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    gl.static_print(gl.to_linear_layout(a_op, [64, 64]))
    # words [64 keys, 16 words] of one 64-column block: thread (g, t) of warp w: keys 16w + g, 16w + 8 + g; words 4t + j
    LW: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [0, 2], [8, 0]], lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 16])
    keys = gl.arange(0, 64, layout=gl.SliceLayout(1, LW))
    words = gl.arange(0, 16, layout=gl.SliceLayout(0, LW))
    w = gl.load(w_ptr + keys[:, None] * 164 + words[None, :])
    v0, v1, v2, v3 = gl.inline_asm_elementwise(
        _E4M3X4_F16, "=h,=h,=h,=h,r", [w], dtype=(gl.float16,) * 4, is_pure=True, pack=1)  # (fp16, as the tile's K)
    x = gl.join(gl.join(v0, v2), gl.join(v1, v3))  # [key, word, a, b]
    x = gl.reshape(x, [64, 4, 4, 2, 2])  # [key, t, j, a, b]
    x = gl.permute(x, (0, 2, 3, 1, 4))  # [key, j, a, t, b]
    x = gl.reshape(x, [64, 64])
    gl.static_print(x.type.layout)
    ka = gl.convert_layout(x, a_op, assert_trivial=True)
    _times_b_tile(ka, q_ptr, out_ptr, 64, acc_l, num_warps)  # B = Q^T [64 columns, 64 heads]

@gluon.jit
def _v_operand(w_ptr, p_ptr, out_ptr, num_warps: gl.constexpr):
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l, k_width=2)
    gl.static_print(gl.to_linear_layout(a_op, [128, 64]))
    # V words [64 keys, 32 words] of a 128-column slice: thread (g, t) of warp w: word 8w + g, keys 2t + b + 8a + 16j
    LV: gl.constexpr = gl.DistributedLinearLayout(
        reg_bases=[[1, 0], [8, 0], [16, 0], [32, 0]], lane_bases=[[2, 0], [4, 0], [0, 1], [0, 2], [0, 4]],
        warp_bases=[[0, 8], [0, 16]], block_bases=[], shape=[64, 32])
    toks = gl.arange(0, 64, layout=gl.SliceLayout(1, LV))
    wv = gl.arange(0, 32, layout=gl.SliceLayout(0, LV))
    W = gl.load(w_ptr + toks[:, None] * 164 + wv[None, :])
    we, wo = gl.split(gl.permute(gl.reshape(W, [32, 2, 32]), (0, 2, 1)))
    y00, y01, y10, y11, y20, y21, y30, y31 = gl.inline_asm_elementwise(
        _E4M3_PAIRS, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [we, wo], dtype=(gl.bfloat16,) * 8, is_pure=True, pack=1)
    z = gl.join(gl.join(gl.join(y00, y01), gl.join(y20, y21)), gl.join(gl.join(y10, y11), gl.join(y30, y31)))
    # [p, x, b, eh, el], x = 8w + g -> [p, xw, xg, b, eh, el] -> rows 64 eh + 16 xw + 8 el + xg, keys 2p + b
    z = gl.reshape(z, [32, 4, 8, 2, 2, 2])
    z = gl.permute(z, (4, 1, 5, 2, 0, 3))  # [eh, xw, el, xg, p, b]
    z = gl.reshape(z, [128, 64])
    gl.static_print(z.type.layout)
    va = gl.convert_layout(z, a_op, assert_trivial=True)
    _times_b_tile(va, p_ptr, out_ptr, 128, acc_l, num_warps)  # B = P^T [64 keys, 64 heads]


def main() -> None:
    target = GPUTarget("cuda", 90, 32)
    for name, fn, sig in (("S^T = K·Q^T", _k_operand, {"w_ptr": "*i32", "q_ptr": "*bf16", "out_ptr": "*fp32"}),
                          ("O^T = V^T·P^T", _v_operand, {"w_ptr": "*i32", "p_ptr": "*bf16", "out_ptr": "*fp32"})):
        src = GluonASTSource(fn, sig | {"num_warps": "constexpr"}, {"num_warps": 4})
        c = triton.compile(src, target=target, options={"num_warps": 4})
        print(f"{name}: compiled (the operand is a relabelling of the words), shared memory {c.metadata.shared} B, "
              f"{c.asm['ptx'].count('wgmma.mma_async')} wgmma")


if __name__ == "__main__":
    main()
