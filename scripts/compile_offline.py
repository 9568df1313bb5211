"""Compile the stage-4 kernels for Hopper (sm_90a) on a machine without a GPU, and report their resources.

    python scripts/compile_offline.py [--keep DIR] [names...]

Triton compiles to PTX and cubin without a driver when given a target, so the registers, spills, shared memory
and tensor-core instructions (wgmma or mma.sync) of every launch configuration can be read here, at no GPU time.
Use the Triton the GPU machine has (3.6): e.g. `pip install triton==3.6.0` into a separate environment.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile for the GPU target, never interpret
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
#: The shared-memory layout of the Gluon tiles' TMA descriptors, as Triton spells it in a kernel signature.
SMEM_LAYOUT = ("NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2, transposed=False, "
               "fp4_padded=False, cga_layout=[])")


def ptxas_report(ptx: str, name: str, workdir: Path) -> dict:
    """Registers, spill bytes and stack frame from `ptxas -v` (sm_90a) for the PTX text."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    src = workdir / f"{name}.ptx"
    src.write_text(ptx)
    out = subprocess.run([str(ptxas), "-v", "-arch=sm_90a", str(src), "-o", str(workdir / f"{name}.cubin")],
                         capture_output=True, text=True)
    text = out.stdout + out.stderr
    get = lambda pat: int(m.group(1)) if (m := re.search(pat, text)) else None
    return {"registers": get(r"Used (\d+) registers"), "spill_stores": get(r"(\d+) bytes spill stores"),
            "spill_loads": get(r"(\d+) bytes spill loads"), "stack": get(r"(\d+) bytes stack frame"),
            "ptxas": text.strip().splitlines()[-3:] if out.returncode == 0 else text}


def report(name: str, compiled, workdir: Path) -> dict:
    ptx = compiled.asm["ptx"]
    r = ptxas_report(ptx, name, workdir)
    r.update(shared=compiled.metadata.shared, num_warps=compiled.metadata.num_warps,
             wgmma=ptx.count("wgmma.mma_async"), mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
             tma=ptx.count("cp.async.bulk.tensor"), cp_async=len(re.findall(r"cp\.async\.(ca|cg)", ptx)),
             # every CTA barrier in the kernel, written or inserted by Triton's barrier analysis (docs/kernel.md §12)
             bar_sync=len(re.findall(r"\b(?:bar|barrier)\.sync\b", ptx)))
    (workdir / f"{name}.ttgir").write_text(compiled.asm["ttgir"])
    return r


def compile_v5(dtype: str = "bf16", causal: bool = False, sub: int = 64, stages: int = 2, mode: int = 0,
               fine: bool = False):
    from triton.experimental.gluon._runtime import GluonASTSource

    from mla_tutorial.kernels import v5_gluon as v5

    layout = SMEM_LAYOUT
    sig = {"q_ptr": f"*{dtype}", "k_desc": f"tensordesc<{dtype}[{sub}, 64],{layout}>", "block_table_ptr": "*i32",
           "seqlens_ptr": "*i32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "part_out_ptr": "*fp32",
           "part_lse_ptr": "*fp32", "meta_ptr": "*i32", "num_splits_ptr": "*i32", "ok_ptr": "*i32",
           "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32", "stride_btb": "i32",
           "s_q": "i32", "h_q": "i32", "heads_per_kv": "i32", "rows_per_kv": "i32", "m_tiles": "i32",
           "num_blocks": "i32", "max_blocks": "i32", "qk_scale": "fp32", "CAUSAL": "constexpr",
           "META_COLS": "constexpr", "SUB": "constexpr", "STAGES": "constexpr", "MODE": "constexpr",
           "FINE": "constexpr", "num_warps": "constexpr"}
    src = GluonASTSource(v5._v5_kernel, sig, {"CAUSAL": causal, "META_COLS": 8, "SUB": sub, "STAGES": stages,
                                              "MODE": mode, "FINE": fine, "num_warps": 8})
    return triton.compile(src, target=TARGET, options={"num_warps": 8})


def compile_seesaw(dtype: str = "bf16", causal: bool = False, fine: bool = False, early: int = 0, trace: bool = False,
                   max_first: bool = False, opaque: bool = True, q_async: bool = True, lines: int = 1,
                   q_tma: bool = False):
    from triton.experimental.gluon._runtime import GluonASTSource

    from mla_tutorial.kernels import v5_seesaw as ss

    layout = SMEM_LAYOUT
    sig = {"q_ptr": f"*{dtype}", "k_desc": f"tensordesc<{dtype}[64, 64],{layout}>",
           "q_desc": f"tensordesc<{dtype}[64, 64],{layout}>",
           "block_table_ptr": "*i32", "seqlens_ptr": "*i32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32",
           "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "meta_ptr": "*i32", "num_splits_ptr": "*i32",
           "ok_ptr": "*i32", "trace_ptr": "*i64" if trace else "*i32", "stride_qb": "i32", "stride_qs": "i32",
           "stride_qh": "i32", "stride_btb": "i32", "s_q": "i32", "h_q": "i32", "heads_per_kv": "i32",
           "rows_per_kv": "i32", "m_tiles": "i32", "num_blocks": "i32", "max_blocks": "i32", "qk_scale": "fp32",
           "CAUSAL": "constexpr", "META_COLS": "constexpr", "FINE": "constexpr", "MODE": "constexpr",
           "EARLY": "constexpr", "TRACE": "constexpr", "MAX_FIRST": "constexpr",
           "OPAQUE": "constexpr", "Q_ASYNC": "constexpr", "STORE_LINES": "constexpr", "Q_TMA": "constexpr",
           "num_warps": "constexpr"}
    # every pointer 16-byte aligned and q's strides multiples of 16, as Triton (and FastLauncher's key) specialize
    # them on the GPU for fresh tensors; the cp.async of Q needs q's, and the partials' 8-byte stores part_out's
    # (before the thirteenth session only q and out were marked: 4-byte partial stores, 176 / 240 B of spills, against
    # the GPU's 8-byte stores and 216 / 316 B)
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)}
    src = GluonASTSource(ss._ss_kernel, sig, {"CAUSAL": causal, "META_COLS": 8, "FINE": fine, "MODE": 0,
                                              "EARLY": early, "TRACE": trace, "MAX_FIRST": max_first,
                                              "OPAQUE": opaque, "Q_ASYNC": q_async, "STORE_LINES": lines,
                                              "Q_TMA": q_tma, "num_warps": 4}, attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4, "maxnreg": ss.WS_REGS})


def compile_fp8_seesaw(causal: bool = False, mode: int = 0, tps: int = 1, early: int = 1):
    """The FP8 seesaw tile (v5_fp8_seesaw.py) with v5's switches (MAX_FIRST, OPAQUE, Q_ASYNC, LINES 1, Q_TMA), tps
    scale tiles a producer step (its TILES_PER_STEP)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from mla_tutorial.kernels import v5_fp8_seesaw as fs

    sw32 = SMEM_LAYOUT.replace("element_bitwidth=16, rank=2", "element_bitwidth=32, rank=3")
    plain = SMEM_LAYOUT.replace("swizzle_byte_width=128, element_bitwidth=16", "swizzle_byte_width=0, "
                                "element_bitwidth=32")
    sig = {"q_ptr": "*bf16", "kv_desc": f"tensordesc<i32[4, 64, 32],{sw32}>",
           "sc_desc": f"tensordesc<i32[64, 4],{plain}>", "kr_desc": f"tensordesc<bf16[64, 64],{SMEM_LAYOUT}>",
           "q_desc": f"tensordesc<bf16[64, 64],{SMEM_LAYOUT}>",
           "block_table_ptr": "*i32", "seqlens_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
           "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "meta_ptr": "*i32", "num_splits_ptr": "*i32",
           "ok_ptr": "*i32", "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32", "stride_btb": "i32",
           "s_q": "i32", "h_q": "i32", "heads_per_kv": "i32", "rows_per_kv": "i32", "m_tiles": "i32",
           "num_blocks": "i32", "max_blocks": "i32", "qk_scale": "fp32",
           "CAUSAL": "constexpr", "META_COLS": "constexpr", "MODE": "constexpr", "MAX_FIRST": "constexpr",
           "OPAQUE": "constexpr", "Q_ASYNC": "constexpr", "STORE_LINES": "constexpr", "Q_TMA": "constexpr",
           "TPS": "constexpr", "C_REGS": "constexpr", "P_REGS": "constexpr", "EARLY": "constexpr",
           "num_warps": "constexpr"}
    # every pointer 16-byte aligned and q's strides multiples of 16 (as compile_seesaw)
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)}
    src = GluonASTSource(fs._fs_kernel, sig, {"CAUSAL": causal, "META_COLS": 8, "MODE": mode, "MAX_FIRST": True,
                                              "OPAQUE": True, "Q_ASYNC": True, "STORE_LINES": 1, "Q_TMA": True,
                                              "TPS": tps, "C_REGS": fs.STEP_REGS[tps][0],
                                              "P_REGS": fs.STEP_REGS[tps][1], "EARLY": early, "num_warps": 4},
                         attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": 4, "maxnreg": fs.WS_REGS})


def compile_m16(variant: str, causal: bool = False, dtype: str = "bf16"):
    """The TMA-fed 16-row bf16 tile (v5_m16.py), variant `variant` of M16_VARIANTS."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from mla_tutorial.kernels import v5_m16

    keys, slots, warps, _ = v5_m16.m16_variant(variant)
    chunks = SMEM_LAYOUT.replace("rank=2", "rank=3")
    sig = {"q_ptr": f"*{dtype}", "ckv_desc": f"tensordesc<{dtype}[8, {keys}, 64],{chunks}>",
           "kr_desc": f"tensordesc<{dtype}[{keys}, 64],{SMEM_LAYOUT}>", "block_table_ptr": "*i32",
           "seqlens_ptr": "*i32", "out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "part_out_ptr": "*fp32",
           "part_lse_ptr": "*fp32", "meta_ptr": "*i32", "num_splits_ptr": "*i32", "ok_ptr": "*i32",
           "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32", "stride_btb": "i32",
           "s_q": "i32", "h_q": "i32", "heads_per_kv": "i32", "rows_per_kv": "i32", "m_tiles": "i32",
           "num_blocks": "i32", "max_blocks": "i32", "qk_scale": "fp32", "CAUSAL": "constexpr",
           "META_COLS": "constexpr", "KEYS": "constexpr", "SLOTS": "constexpr", "num_warps": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 5)}  # q, out
    src = GluonASTSource(v5_m16._v5_m16_kernel, sig, {"CAUSAL": causal, "META_COLS": 8, "KEYS": keys,
                                                       "SLOTS": slots, "num_warps": warps}, attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "maxnreg": v5_m16.M16_MAXNREG})


def compile_v5_fp8(causal: bool = False, kind: str = "gluon", mode: int = 0, trace: bool = False):
    """A Gluon FP8 tile over a contiguous FP8 cache (one signature for all three): kind "gluon" the lockstep tile
    (v5_fp8_gluon.py), "ws" the warp-specialised one (v5_fp8_ws.py; MODE: its probes, 1 the producer alone, 2 the
    consumers alone, ...), "mma" the 16-row one (v5_fp8_mma.py), "mma8" the same with 8 warps and 128 registers."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from mla_tutorial.kernels import (
        v5_fp8_gluon,
        v5_fp8_ksplit,
        v5_fp8_mma,
        v5_fp8_reg,
        v5_fp8_tma,
        v5_fp8_wgr,
        v5_fp8_ws,
        v5_fp8_ws16,
    )

    sig = {"q_ptr": "*bf16", "kv_ptr": "*fp8e4nv", "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
           "out_ptr": "*bf16", "lse_ptr": "*fp32", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
           "meta_ptr": "*i32", "num_splits_ptr": "*i32", "ok_ptr": "*i32", "stride_qb": "i32", "stride_qs": "i32",
           "stride_qh": "i32", "stride_kvb": "i32", "stride_btb": "i32", "s_q": "i32", "h_q": "i32",
           "heads_per_kv": "i32", "rows_per_kv": "i32", "m_tiles": "i32", "num_blocks": "i32", "max_blocks": "i32",
           "qk_scale": "fp32", "CAUSAL": "constexpr", "META_COLS": "constexpr", "num_warps": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 4, 14)}  # q, the cache, out; the block stride
    if kind in ("tma", "ws16", "ws16w"):  # the TMA-fed tiles take descriptors of the raw rows after the cache pointer
        raw = SMEM_LAYOUT.replace("swizzle_byte_width=128, element_bitwidth=16", "swizzle_byte_width=0, "
                                  "element_bitwidth=32")
        descs = [("kv_desc", f"tensordesc<i32[32, 128],{raw}>"), ("sc_desc", f"tensordesc<i32[32, 4],{raw}>"),
                 ("kr_desc", f"tensordesc<bf16[32, 64],{SMEM_LAYOUT}>")]
        sig = dict(list(sig.items())[:2] + descs + list(sig.items())[2:])
        attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 7, 17)}
    fn, warps = {"gluon": (v5_fp8_gluon._v5_fp8_kernel, 8), "ws": (v5_fp8_ws._v5_fp8_ws_kernel,
                                                                   v5_fp8_ws.CONSUMER_WARPS),
                 "mma": (v5_fp8_mma._v5_fp8_mma_kernel, v5_fp8_mma.MMA_WARPS),
                 "mma8": (v5_fp8_mma._v5_fp8_mma_kernel, v5_fp8_mma.WIDE_WARPS),
                 "tma": (v5_fp8_tma._v5_fp8_tma_kernel, v5_fp8_tma.TMA_WARPS),
                 "ws16": (v5_fp8_ws16._v5_fp8_ws16_kernel, v5_fp8_ws16.CONSUMER_WARPS),
                 "ws16w": (v5_fp8_ws16._v5_fp8_ws16_kernel, v5_fp8_ws16.CONSUMER_WARPS),
                 "ksplit": (v5_fp8_ksplit._v5_fp8_ksplit_kernel, v5_fp8_ksplit.KS_WARPS),
                 "wgr": (v5_fp8_wgr._v5_fp8_wgr_kernel, v5_fp8_wgr.WGR_WARPS),
                 **{k: (v5_fp8_reg._v5_fp8_reg_kernel, v5_fp8_reg.REG_WARPS) for k in REG_KINDS}}[kind]
    consts = {"CAUSAL": causal, "META_COLS": 8, "num_warps": warps}
    if kind in ("ws", "mma", "mma8"):
        sig["MODE"] = "constexpr"
        consts["MODE"] = mode
    if kind in (*REG_KINDS, "ksplit", "wgr"):  # the raw rows' descriptors after the cache pointer
        # (v5_fp8_reg.launch_v5_fp8_reg); ksplit: v5_fp8_ksplit.py; wgr: v5_fp8_wgr.py (the register tile's)
        sw32 = SMEM_LAYOUT.replace("element_bitwidth=16, rank=2", "element_bitwidth=32, rank=3")
        plain = SMEM_LAYOUT.replace("swizzle_byte_width=128, element_bitwidth=16", "swizzle_byte_width=0, "
                                    "element_bitwidth=32")
        descs = [("kv_desc", f"tensordesc<i32[4, 64, 32],{sw32}>"), ("sc_desc", f"tensordesc<i32[64, 4],{plain}>"),
                 ("kr_desc", f"tensordesc<bf16[64, 64],{SMEM_LAYOUT}>")]
        sig = dict(list(sig.items())[:2] + descs + [kv for kv in list(sig.items())[2:] if kv[0] != "num_warps"])
        if kind == "ksplit":
            sig |= {"num_warps": "constexpr"}
        elif kind == "wgr":  # (the TRACE probe's buffer, the register tile's RAW, its timing MODE, TRACE)
            items = list(sig.items())
            at = [k for k, _ in items].index("qk_scale") + 1
            sig = dict(items[:at] + [("trace_ptr", "*i64" if trace else "*i32")] + items[at:])
            sig |= {"RAW": "constexpr", "MODE": "constexpr", "TRACE": "constexpr", "GUARD": "constexpr",
                    "num_warps": "constexpr"}
            consts |= {"RAW": v5_fp8_wgr.WGR_RAW_SLOTS, "MODE": mode, "TRACE": trace,
                       "GUARD": v5_fp8_wgr.guard_for(mode, trace)}
        else:
            sig |= {"RAW": "constexpr", "num_warps": "constexpr"}
            consts |= {"RAW": v5_fp8_reg.REG_RAW_SLOTS}
        attrs = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 7, 17)}  # (the descriptors' places counted)
        if kind == "wgr":  # every pointer 16-byte aligned, as the GPU specializes fresh tensors (the partials' stores)
            attrs |= {(i,): [["tt.divisibility", 16]] for i in (5, 6, 8, 9, 10, 11, 12, 13)}
    if kind in ("ws16", "ws16w"):  # ws16w: the 8-warp producer (PW precedes num_warps in the signature)
        sig = {k: v for k, v in sig.items() if k != "num_warps"} | {"PW": "constexpr", "num_warps": "constexpr"}
        consts["PW"] = 8 if kind == "ws16w" else 4
    src = GluonASTSource(fn, sig, consts, attrs)
    options = {"num_warps": warps}
    if kind in ("ws", "mma8", "ws16", "ws16w", "ksplit", "wgr", *REG_KINDS):
        options["maxnreg"] = {"ws": v5_fp8_ws.WS_REGS, "mma8": v5_fp8_mma.WIDE_MAXNREG,
                              "ws16": v5_fp8_ws16.WS16_REGS, "ws16w": v5_fp8_ws16.WIDE_REGS,
                              "ksplit": v5_fp8_ksplit.KS_MAXNREG, "wgr": v5_fp8_wgr.WGR_MAXNREG}.get(
                                  kind, v5_fp8_reg.REG_MAXNREG)
    return triton.compile(src, target=TARGET, options=options)


#: The register tile (v5_fp8_reg.py) and its prepared variants' names here ("reg-NAME": a variant's constexprs go
#: into compile_v5_fp8's consts; none prepared now).
REG_KINDS = ("reg",)


def compile_v4(block_m: int, block_n: int, num_warps: int, num_stages: int, causal: bool = False,
               dtype: str = "bf16", small: bool = False, fp8: bool = False, tma: bool = False):
    from mla_tutorial.kernels import v4_balanced as v4
    from mla_tutorial.kernels import v5_small

    kv = "fp8e4nv" if fp8 else dtype  # an FP8 cache: 656-byte rows, strides in bytes (656 = 41·16)
    sig = {"q_ptr": f"*{dtype}", "kv_ptr": f"*{kv}", "block_table_ptr": "*i32", "seqlens_ptr": "*i32",
           "out_ptr": f"*{dtype}", "lse_ptr": "*fp32", "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
           "meta_ptr": "*i32", "num_splits_ptr": "*i32",
           "stride_qb": "i32", "stride_qs": "i32", "stride_qh": "i32",
           "stride_kvb": "i32", "stride_kvt": "i32", "stride_kvh": "i32", "stride_btb": "i32",
           "s_q": "i32", "h_q": "i32", "heads_per_kv": "i32", "rows_per_kv": "i32", "m_tiles": "i32",
           "qk_scale": "fp32",
           "CAUSAL": "constexpr", "PAGE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "D_NOPE": "constexpr", "D_ROPE": "constexpr", "UPCAST": "constexpr", "NUM_STAGES": "constexpr",
           "META_COLS": "constexpr"}
    consts = {"CAUSAL": causal, "PAGE": 64, "BLOCK_M": block_m, "BLOCK_N": block_n, "D_NOPE": 512, "D_ROPE": 64,
              "UPCAST": False, "NUM_STAGES": num_stages, "META_COLS": 8}
    # pointers 16-byte aligned and the q/k_cache strides multiples of 16 (576·n), as the JIT specializes them
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(16)}
    if small:  # the small tile also takes the ok flag and the pool size (in-kernel block-id bounds), and IS_FP8
        names = list(sig)
        names.insert(names.index("stride_qb"), "ok_ptr")
        names.insert(names.index("qk_scale"), "num_blocks")
        sig = {n: sig.get(n, {"ok_ptr": "*i32", "num_blocks": "i32"}.get(n)) for n in names}
        sig["IS_FP8"] = sig["FP8_TMA"] = "constexpr"
        consts["IS_FP8"], consts["FP8_TMA"] = fp8, tma
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(17)}
    fn = v5_small._mla_decode_v5_small_kernel if small else v4._mla_decode_v4_kernel
    if small:  # the small tile also takes the ok flag and the pool size
        items = list(sig.items())
        items.insert(10, ("ok_ptr", "*i32"))
        items.insert(items.index(("m_tiles", "i32")) + 1, ("num_blocks", "i32"))
        items.insert(items.index(("num_blocks", "i32")) + 1, ("max_blocks", "i32"))
        sig = dict(items)
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(17)}
    src = ASTSource(fn, sig, consts, attrs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "num_stages": num_stages})


def compile_combine(rows: int, block_d: int, splits: int, check: bool = False, warps: int = 4):
    from mla_tutorial.kernels import combine

    sig = {"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "split_offsets_ptr": "*i32", "out_ptr": "*bf16",
           "lse_ptr": "*fp32", "flag_ptr": "*i32", "s_q": "i32", "h_q": "i32", "ROWS": "constexpr",
           "D": "constexpr", "BLOCK_D": "constexpr", "SPLITS": "constexpr", "UPCAST": "constexpr",
           "USE_PDL": "constexpr", "CHECK": "constexpr", "OFFSETS_FIRST": "constexpr"}
    consts = {"ROWS": rows, "D": 512, "BLOCK_D": block_d, "SPLITS": splits, "UPCAST": False, "USE_PDL": True,
              "CHECK": check, "OFFSETS_FIRST": True}
    src = ASTSource(combine._combine_kernel, sig, consts, {(i,): [["tt.divisibility", 16]] for i in range(5)})
    options = {"num_warps": warps} | ({"debug": True, "sanitize_overflow": False} if check else {})
    return triton.compile(src, target=TARGET, options=options)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", default="/tmp/compile_offline")
    ap.add_argument("names", nargs="*", default=["v5g"])
    args = ap.parse_args()
    workdir = Path(args.keep)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"triton {triton.__version__}, target {TARGET}")
    for name in args.names:
        if name.startswith("v5g"):  # v5g[:SUB,STAGES[,MODE]]
            sub, stages, mode, fine = ([int(x) for x in name[4:].split(",")] + [0, 0])[:4] if ":" in name \
                else (64, 2, 0, 0)
            for causal in (False, True):
                ck = compile_v5(causal=causal, sub=sub, stages=stages, mode=mode, fine=bool(fine))
                print(f"v5g sub={sub} stages={stages} mode={mode} fine={fine} causal={causal}: "
                      f"{report(f'v5g_{sub}_{stages}_{mode}_{fine}_c{int(causal)}', ck, workdir)}")
        elif name == "v5f":  # the Gluon FP8 tile
            for causal in (False, True):
                ck = compile_v5_fp8(causal=causal)
                print(f"v5f causal={causal}: {report(f'v5f_c{int(causal)}', ck, workdir)}")
        elif name.startswith("v5fmma"):  # the 16-row Gluon FP8 tile (mma.sync; v5fmma:MODE: its parts alone;
            #                               v5fmma8[:MODE]: 8 warps per program, 128 registers)
            base, _, mode = name.partition(":")
            mode, kind = int(mode or 0), "mma8" if base == "v5fmma8" else "mma"
            for causal in (False, True):
                ck = compile_v5_fp8(causal=causal, kind=kind, mode=mode)
                print(f"{base} mode={mode} causal={causal}: {report(f'{base}{mode}_c{int(causal)}', ck, workdir)}")
        elif name.partition(":")[0] in ("v5ftma", "v5fws16", "v5fws16w", "v5fksplit", "v5fwgr", "v5fwgrt",
                                        *(f"v5f{k}" for k in REG_KINDS)):
            # the other 16-row Gluon FP8 tiles (tma: fed by TMA; ws16: warp-specialised, ws16w: with an 8-warp
            # producer; reg: dequantizing into registers, and its variants; ksplit: its warps splitting S's reduction;
            # wgr[:MODE]: its products on wgmma, transposed; MODE 3: no dequantization; wgrt: with its TRACE stamps)
            base, _, mode = name.partition(":")
            for causal in (False, True):
                ck = compile_v5_fp8(causal=causal, kind=base[3:].removesuffix("t") if base == "v5fwgrt" else base[3:],
                                    mode=int(mode or 0), trace=base == "v5fwgrt")
                print(f"{name} causal={causal}: {report(f'{base}{mode}_c{int(causal)}', ck, workdir)}")
        elif name.startswith("m16"):  # the TMA-fed 16-row bf16 tile (v5_m16.py): m16[:VARIANT]
            variant = name.partition(":")[2] or None
            for causal in (False, True):
                ck = compile_m16(variant, causal=causal)
                print(f"{name} causal={causal}: {report(f'm16_{variant}_c{int(causal)}', ck, workdir)}")
        elif name.startswith("v5fws"):  # the warp-specialised Gluon FP8 tile (v5fws:MODE: its parts alone)
            mode = int(name.split(":")[1]) if ":" in name else 0
            for causal in (False, True):
                ck = compile_v5_fp8(causal=causal, kind="ws", mode=mode)
                print(f"v5fws mode={mode} causal={causal}: {report(f'v5fws{mode}_c{int(causal)}', ck, workdir)}")
        elif name.split(":")[0].split("-")[0] == "ss":  # the seesaw tile, ss[-OPTION...][:EARLY] (v5's EARLY is 1);
            base, _, early = name.partition(":")  # options: fine (one mbarrier per box), trace (its cycle stamps),
            opts = base.split("-")[1:]  # mf, hoist, syncq, narrow / outonly (STORE_LINES 0 / 2), qtma (Q_TMA)
            for causal in (False, True):
                ck = compile_seesaw(causal=causal, fine="fine" in opts, early=int(early or 0), trace="trace" in opts,
                                    max_first="mf" in opts, opaque="hoist" not in opts, q_async="syncq" not in opts,
                                    lines=0 if "narrow" in opts else 2 if "outonly" in opts else 1,
                                    q_tma="qtma" in opts)
                print(f"{name} causal={causal}: {report(f'{base}{early}_c{int(causal)}', ck, workdir)}")
        elif name.startswith("fss"):  # the FP8 seesaw tile (v5_fp8_seesaw.py): fss[TPS][-e2][:MODE] (-e2: EARLY 2)
            base, _, mode = name.partition(":")
            base, _, early = base.partition("-e")
            mode, tps = int(mode or 0), int(base[3:] or 1)
            for causal in (False, True):
                ck = compile_fp8_seesaw(causal=causal, mode=mode, tps=tps, early=int(early or 1))
                print(f"{name} causal={causal}: {report(f'fss{tps}_{mode}_c{int(causal)}', ck, workdir)}")
        elif name.startswith("combine"):  # the combine kernel: combine[:ROWS,BLOCK_D,SPLITS[,CHECK[,WARPS]]]
            from mla_tutorial.kernels.combine import MANY_SPLITS_SHAPE  # (default: its shape for many splits)

            spec = tuple(int(x) for x in name[8:].split(",")) if ":" in name else MANY_SPLITS_SHAPE
            name = "combine_" + "_".join(map(str, spec))
            print(f"combine rows, block_d, splits[, check, warps] = {spec}: "
                  f"{report(name, compile_combine(*spec[:3], *map(bool, spec[3:4]), *spec[4:]), workdir)}")
        elif name.startswith(("v4:", "v5s:", "v5s-fp8:", "v5s-fp8tma:")):  # v4:BLOCK_M,BLOCK_N,warps,stages (v5s:
            kind, spec = name.split(":")  # the small tile; v5s-fp8: on an FP8 cache; v5s-fp8tma: with TMA loads)
            bm, bn, w, st = (int(x) for x in spec.split(","))
            ck = compile_v4(bm, bn, w, st, small=kind.startswith("v5s"), fp8=kind.startswith("v5s-fp8"),
                            tma=kind == "v5s-fp8tma")
            print(f"{kind} bm={bm} bn={bn} warps={w} stages={st}: "
                  f"{report(f'{kind}_{bm}_{bn}_{w}_{st}', ck, workdir)}")


if __name__ == "__main__":
    main()
