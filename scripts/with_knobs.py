"""Run a script or a module with kernels/v5_fp8_reg.py's (REG_*) or v5_fp8_wgr.py's (WGR_*) module knobs set, in
this one process: what a GPU call measures before a commit makes a variant the default (scripts/gpu_final.sh's
regpick and sass steps).

    python scripts/with_knobs.py REG_MAXNREG=240 REG_RAW_SLOTS=2 -- scripts/gpu_fp8_bench.py --mma --out x.json
    python scripts/with_knobs.py REG_MAXNREG=240 -- -m pytest -m gpu tests/test_fp8.py -k "matrix and reg"
    python scripts/with_knobs.py WGR_MAXNREG=232 -- -m pytest -m gpu tests/test_wgr_gpu.py
    python scripts/with_knobs.py -- -m mla_tutorial bench ...        (no knobs: the defaults)
"""

from __future__ import annotations

import runpy
import sys

#: the modules whose knobs this sets: name prefix -> module (kernels/)
_MODULES = {"REG_": "v5_fp8_reg", "WGR_": "v5_fp8_wgr"}


def _module(prefix: str):
    import importlib

    return importlib.import_module(f"mla_tutorial.kernels.{_MODULES[prefix]}")


def current_knobs() -> dict:
    """v5_fp8_reg's REG_* and v5_fp8_wgr's WGR_* knobs as this process has them."""
    knobs = {}
    for prefix in _MODULES:
        mod = _module(prefix)
        knobs |= {k: v for k in dir(mod) if k.startswith(prefix)
                  and isinstance(v := getattr(mod, k), (bool, int, float))}  # (not its tables and layouts)
    return knobs


def set_knobs(items: list[str]) -> dict:
    """Set the knobs from "KNOB=INT" strings (a REG_* name v5_fp8_reg has, a WGR_* name v5_fp8_wgr has; a bool knob
    takes 0 or 1); returns current_knobs()."""
    knobs = current_knobs()
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or name not in knobs:
            raise SystemExit(f"with_knobs.py: {item!r} is not KNOB=INT for one of the knobs {sorted(knobs)}")
        setattr(_module(name[:4]), name, type(knobs[name])(int(value)))
    return current_knobs()


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("usage: with_knobs.py [KNOB=INT ...] -- (SCRIPT | -m MODULE) [ARGS ...]")
    split = argv.index("--")
    knobs, rest = argv[:split], argv[split + 1:]
    print("knobs:", set_knobs(knobs), flush=True)
    if not rest:
        raise SystemExit("with_knobs.py: nothing to run after --")
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
