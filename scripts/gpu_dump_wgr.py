"""GPU probe: the wgmma register tile as the GPU image compiles it, for each setting of a knob of v5_fp8_wgr (a WGR_*
module constant the launch passes, e.g. WGR_MAXNREG): registers, spills, shared memory, the page loop's instructions,
local loads and barriers, and the cubin and PTX, written to --out DIR. The GPU's ptxas is not the CPU machine's: the
twenty-second session had a variant whose page loop was unchanged offline and spilled on the GPU.

    PYTHONPATH=src python3 scripts/gpu_dump_wgr.py --out DIR --knob WGR_MAXNREG --values 255,232
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def page_loop_counts(cubin: Path) -> dict:
    """The page loop's instructions, local loads (spills reloaded), local stores and barriers in the SASS, with
    Triton's bundled cuobjdump ({} without it): the first loop that holds a page's products (the smallest span from
    a backward branch's target to the branch with at least 60 HGMMA, the earliest of those about as short; MODE
    4's guard has a second one, its second pass, counted in page_loops)."""
    import re
    import subprocess

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    try:
        sass = subprocess.run([str(tool), "-sass", str(cubin)], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    ins = [(int(m.group(1), 16), m.group(2)) for line in sass.splitlines()
           if (m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*);", line))]  # (address, instruction)
    at = {a: i for i, (a, _) in enumerate(ins)}
    loops = []  # (first, last) instruction of each span back from a branch that holds a page's products
    for i, (a, text) in enumerate(ins):
        m = re.search(r"BRA\b.*0x([0-9a-f]+)", text)
        if m and (t := int(m.group(1), 16)) < a and t in at:
            if sum("HGMMA" in x for _, x in ins[at[t]:i + 1]) >= 60:
                loops.append((at[t], i))
    if not loops:
        return {}
    shortest = min(i - j for j, i in loops)
    inner = [(j, i) for j, i in loops if i - j <= 1.2 * shortest]  # (the request loops around them are ~2x longer)
    j, i = min(inner)
    loop = [x for _, x in ins[j:i + 1]]
    return {"loop_instructions": len(loop), "loop_ldl": sum("LDL" in x for x in loop),
            "loop_stl": sum("STL" in x for x in loop), "loop_bar": sum("BAR.SYNC" in x for x in loop),
            "page_loops": len(inner)}


def main() -> int:
    from mla_tutorial.fp8 import quantize_k_cache
    from mla_tutorial.kernels import mla_decode_v5, plan, v5_fp8_wgr
    from mla_tutorial.kernels.schedule import get_mla_metadata
    from mla_tutorial.measure.kernel_bench import shape_inputs

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--knob", default="WGR_MAXNREG")
    ap.add_argument("--values", default="255")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    default = getattr(v5_fp8_wgr, args.knob)
    (q, k, bt, sl), _ = shape_inputs(4, 16, 1, 256, "fixed", 0)
    k8 = quantize_k_cache(k)
    meta, splits = get_mla_metadata(sl, 16, 1)
    report = {}
    try:
        for value in args.values.split(","):
            setattr(v5_fp8_wgr, args.knob, type(default)(int(value)))
            plan.clear_plans()
            v5_fp8_wgr._LAUNCH._cache.clear()
            mla_decode_v5(q, k8, bt, sl, 512, tile_scheduler_metadata=meta, num_splits=splits, check_bounds=False,
                          is_fp8_kvcache=True, path="wgr")
            torch.cuda.synchronize()
            (compiled, _), = v5_fp8_wgr._LAUNCH._cache.values()
            name = f"wgr_{args.knob}_{value}"
            (out / f"{name}.cubin").write_bytes(compiled.asm["cubin"])
            (out / f"{name}.ptx").write_text(compiled.asm["ptx"])
            report[name] = {"n_regs": compiled.n_regs, "n_spills": compiled.n_spills,
                            "shared": compiled.metadata.shared} | page_loop_counts(out / f"{name}.cubin")
            print(name, report[name], flush=True)
    finally:
        setattr(v5_fp8_wgr, args.knob, default)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
