"""Occupancy of the Triton kernels: registers, spills, shared memory, programs per SM, tensor-core instructions.

Memory traffic and FLOPs say what a kernel must do; occupancy says how much of the machine one launch can keep
busy while doing it. For every compiled kernel (a Triton `CompiledKernel`: `n_regs`, `n_spills`,
`metadata.shared`, `metadata.num_warps`, and its PTX in `asm["ptx"]`):

    registers per thread   n_regs (at most 255 on Hopper; beyond that values spill to local memory: n_spills)
    programs per SM        the least of
                             registers:  65,536 per SM / (num_warps · 32 · n_regs rounded up per warp to 256)
                             shared:     228 KiB per SM / (the kernel's shared memory + 1 KiB the runtime keeps)
                             warps:      64 per SM / num_warps
                             blocks:     32 per SM
    tensor cores           "wgmma" (Hopper's asynchronous warpgroup MMA) or "mma.sync" (Ampere-style MMA, one warp
                           at a time), counted in the PTX; in the SASS too (HGMMA, HMMA) where `cuobjdump` exists

The limits are the device's (torch's device properties) or, for the pure functions tested on a CPU, Hopper's.
`python -m mla_tutorial.measure.occupancy` launches the stage-4 kernel at each tile height the benchmarks use
and prints the table; `bench --kernel` stores the same for every kernel it compiled.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SMLimits:
    """What one streaming multiprocessor offers the programs resident on it."""

    name: str
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    shared_per_sm: int = 233472  # 228 KiB (Hopper)
    reserved_shared_per_block: int = 1024  # kept by the CUDA runtime for every resident block
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    register_granularity: int = 256  # registers are allocated to a warp in units of 256


HOPPER = SMLimits("sm_90 (H100/H200), datasheet limits")


def sm_limits(device: Any = None) -> SMLimits:
    """The limits of a CUDA device from torch's device properties (Hopper's where a property is missing)."""
    import torch

    props = torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device())
    return SMLimits(
        name=f"{props.name} (sm_{props.major}{props.minor})",
        registers_per_sm=int(getattr(props, "regs_per_multiprocessor", HOPPER.registers_per_sm)),
        shared_per_sm=int(getattr(props, "shared_memory_per_multiprocessor", 0) or HOPPER.shared_per_sm),
        max_warps_per_sm=int(getattr(props, "max_threads_per_multi_processor", 2048)) // 32,
    )


def programs_per_sm(n_regs: int, num_warps: int, shared_bytes: int, limits: SMLimits = HOPPER) -> tuple[int, str]:
    """How many programs (thread blocks) of this kernel fit on one SM at once, and which resource limits it."""
    regs_per_warp = math.ceil(max(n_regs, 1) * 32 / limits.register_granularity) * limits.register_granularity
    bounds = {
        "registers": limits.registers_per_sm // (regs_per_warp * num_warps),
        "shared memory": limits.shared_per_sm // (shared_bytes + limits.reserved_shared_per_block),
        "warps": limits.max_warps_per_sm // num_warps,
        "blocks": limits.max_blocks_per_sm,
    }
    limiter = min(bounds, key=bounds.get)
    return bounds[limiter], limiter


def tensor_core_instructions(ptx: str | None) -> dict[str, Any]:
    """Count the MMA instructions in PTX text: {"wgmma": n, "mma.sync": n, "kind": the one used, or "none"}."""
    if not ptx:
        return {"wgmma": None, "mma.sync": None, "kind": "unknown (no PTX)"}
    wgmma = len(re.findall(r"\bwgmma\.mma_async", ptx))
    mma = len(re.findall(r"\bmma\.sync", ptx))
    return {"wgmma": wgmma, "mma.sync": mma, "kind": "wgmma" if wgmma else "mma.sync" if mma else "none"}


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:  # Triton's wheel carries one
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


def sass_instructions(cubin: bytes | None) -> dict[str, int] | None:
    """HGMMA / HMMA counts in the SASS of a cubin, where a `cuobjdump` exists; None otherwise."""
    tool = _cuobjdump()
    if not cubin or tool is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    return {"HGMMA": len(re.findall(r"\bHGMMA\b", sass)), "HMMA": len(re.findall(r"\bHMMA\b", sass))}


def describe(name: str, n_regs: int, n_spills: int, shared_bytes: int, num_warps: int, *, ptx: str | None = None,
             num_stages: int | None = None, limits: SMLimits = HOPPER, sass: dict | None = None,
             config: dict | None = None) -> dict[str, Any]:
    """The occupancy record of one compiled kernel, from its numbers (a pure function)."""
    programs, limiter = programs_per_sm(n_regs, num_warps, shared_bytes, limits)
    return {
        "kernel": name, "config": config or {}, "num_warps": num_warps, "num_stages": num_stages,
        "registers_per_thread": n_regs, "spills": n_spills, "shared_bytes": shared_bytes,
        "programs_per_sm": programs, "limited_by": limiter,
        "warps_per_sm": programs * num_warps, "warp_occupancy": programs * num_warps / limits.max_warps_per_sm,
        "tensor_cores": tensor_core_instructions(ptx), "sass": sass, "limits": asdict(limits),
    }


def _constexprs(kernel: Any) -> dict[str, Any]:
    """The kernel's upper-case constexpr arguments (BLOCK_M, BLOCK_N, ...), best effort across Triton versions."""
    src = getattr(kernel, "src", None)
    names = getattr(getattr(src, "fn", None), "arg_names", []) or []
    out = {}
    for key, value in (getattr(src, "constants", None) or {}).items():
        index = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        name = names[index] if isinstance(index, int) and index < len(names) else str(key)
        if name.isupper() and isinstance(value, (int, bool, str)):
            out[name] = value
    return out


def kernel_occupancy(kernel: Any, limits: SMLimits | None = None, name: str | None = None,
                     sass: bool = True) -> dict[str, Any]:
    """The occupancy record of a Triton CompiledKernel that has been launched (so its binary is loaded)."""
    if getattr(kernel, "n_regs", None) is None and hasattr(kernel, "_init_handles"):
        kernel._init_handles()
    meta = kernel.metadata
    asm = getattr(kernel, "asm", {}) or {}
    return describe(name or getattr(kernel, "name", "kernel"), int(kernel.n_regs), int(kernel.n_spills),
                    int(meta.shared), int(meta.num_warps), ptx=asm.get("ptx"),
                    num_stages=getattr(meta, "num_stages", None), limits=limits or sm_limits(),
                    sass=sass_instructions(asm.get("cubin")) if sass else None, config=_constexprs(kernel))


def compiled_kernels() -> dict[str, Any]:
    """{name: CompiledKernel} of the stage-4 kernels compiled in this process: every @triton.jit (and @gluon.jit)
    function of the kernel modules, read from Triton's per-device caches (FastLauncher's launches land there too)."""
    import importlib
    import pkgutil

    from .. import kernels

    found: dict[str, Any] = {}
    seen: set[int] = set()  # a @triton.jit function imported by several modules is one function
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{info.name}")
        for attr, fn in vars(module).items():
            caches = getattr(fn, "device_caches", None)
            if not hasattr(fn, "run") or not isinstance(caches, dict) or id(fn) in seen:
                continue
            seen.add(id(fn))
            for entry in list(caches.values()):
                for i, kernel in enumerate(entry[0].values()):
                    found[f"{info.name}.{attr}#{i}"] = kernel
    return found


def occupancy_table(records: list[dict[str, Any]]) -> list[str]:
    """Markdown rows (header first) of occupancy records."""
    lines = ["| kernel | launched for | config | warps | stages | registers | spills | shared KiB | "
             "programs/SM (limit) | tensor cores |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        config = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k.startswith("BLOCK") or k == "NUM_STAGES")
        shape = r.get("launched_for") or {}
        launched = f"h_q={shape['h_q']}, s_q={shape['s_q']}" if shape else ""
        lines.append(f"| {r['kernel']} | {launched} | {config} | {r['num_warps']} | {r['num_stages']} | "
                     f"{r['registers_per_thread']} | {r['spills']} | {r['shared_bytes'] / 1024:.1f} | "
                     f"{r['programs_per_sm']} ({r['limited_by']}) | {r['tensor_cores']['kind']} |")
    return lines


def stage4_occupancy(head_counts: tuple[int, ...] = (16, 32, 64, 128), s_k: int = 1024) -> list[dict[str, Any]]:
    """Launch the FlashMLA-compatible API once per query-head count (one tile height each) and report every
    kernel compiled by that launch (the main kernel and the combine)."""
    import torch

    from ..kernels import flash_mla_with_kvcache, get_mla_metadata
    from ..kernels.common import launch_config

    device = torch.device("cuda")
    limits = sm_limits(device)
    records = []
    seen: set[int] = set()
    for h_q in head_counts:
        b, pages = 2, -(-s_k // 64)
        q = torch.randn(b, 1, h_q, 576, device=device, dtype=torch.bfloat16)
        k_cache = torch.randn(b * pages, 64, 1, 576, device=device, dtype=torch.bfloat16)
        table = torch.arange(b * pages, dtype=torch.int32, device=device).view(b, pages)
        seqlens = torch.full((b,), s_k, dtype=torch.int32, device=device)
        meta, splits = get_mla_metadata(seqlens, h_q, 1)
        flash_mla_with_kvcache(q, k_cache, table, seqlens, 512, meta, splits)
        torch.cuda.synchronize()
        tile = launch_config(h_q, device)
        for name, kernel in compiled_kernels().items():
            if id(kernel) in seen:
                continue
            seen.add(id(kernel))
            record = kernel_occupancy(kernel, limits, name)
            record["launched_for"] = {"h_q": h_q, "s_q": 1, "tile": asdict(tile)}
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Occupancy of the stage-4 Triton kernels on this GPU.")
    parser.add_argument("--json", type=Path, default=None, help="also write the records to this file")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("occupancy: needs a CUDA GPU (Triton's interpreter compiles nothing)", file=sys.stderr)
        return 2
    records = stage4_occupancy()
    print("\n".join(occupancy_table(records)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1, default=str) + "\n")
    return 0



__all__ = ["HOPPER", "SMLimits", "compiled_kernels", "describe", "kernel_occupancy", "occupancy_table",
           "programs_per_sm", "sm_limits", "stage4_occupancy", "tensor_core_instructions"]

if __name__ == "__main__":
    raise SystemExit(main())
