"""The course: what the notebooks need beyond the stages themselves, and the solutions of their exercises.

Every notebook in `notebooks/` imports its logic from here or from the stage modules, so that nothing a
notebook shows exists only in the notebook, and every helper is tested (`tests/test_course_*.py`).

    basics    notebooks 01–04 (stages 0–3): prefill and decode loops, measured cache sizes, decode timings on
              the CPU, and the solutions of those notebooks' exercises
    kernels   notebooks 05–07: head tiles, the schedule as pieces, the combine, FlashMLA's checks, step floors,
              cost and capacity, the FP8 row's fields, and the solutions of those notebooks' exercises
    results   the committed GPU results under docs/results/ as tidy rows (both kernel-benchmark formats, decode
              steps, capacity, FP8)
    drawings  matplotlib figures: the head tile, the schedule on a timeline, the combine's weights, the warpgroup
              split, the FP8 row byte by byte, rooflines, latency, capacity and cost

The submodules are imported on first use (`from mla_tutorial.course import basics`, or
`mla_tutorial.course.basics`), so importing this package costs nothing.
"""

from __future__ import annotations

import importlib

_MODULES = ("basics", "kernels", "results", "drawings")


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mla_tutorial.course' has no attribute {name!r}")


__all__ = list(_MODULES)
