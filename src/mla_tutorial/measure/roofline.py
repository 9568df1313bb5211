"""Measured ceilings for the kernel benchmark: copy bandwidth and bf16 matmul rate, on this card, now.

Datasheet numbers are leads; the benchmark reports each kernel as a fraction of these two measured
ceilings (taken in the same run, with the same timing method):
  * copy bandwidth: a large device-to-device copy, counting bytes read + bytes written;
  * matmul rate: an n x n x n bf16 matrix product of random data (2·n³ FLOPs).
Both timed with `triton.testing.do_bench` (warm-up, L2 flushed before every run, median).
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess

import torch


def _driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except Exception:  # nvidia-smi missing
        return "unknown"


def device_info(device: torch.device | str | None = None) -> dict:
    """Card, driver, CUDA, torch and triton versions, and the UTC date, for labelling results."""
    import triton

    info = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        device = torch.device(device or "cuda")
        props = torch.cuda.get_device_properties(device)
        info.update(
            card=props.name,
            driver=_driver_version(),
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            l2_cache_mb=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            smem_per_block_optin=getattr(props, "shared_memory_per_block_optin", None),
        )
    else:
        info.update(card="cpu", driver="none")
    return info


def _median_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def measure_copy_bandwidth(device: torch.device | str = "cuda", nbytes: int = 2 * 2**30) -> dict:
    """Device-to-device copy of `nbytes` (random data): GB/s counting bytes read + bytes written."""
    n = nbytes // 2
    src = torch.randn(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src))
    moved = 2 * src.numel() * src.element_size()
    return {"bytes_moved": moved, "ms": ms, "gbps": moved / ms / 1e6}


def measure_matmul_tflops(device: torch.device | str = "cuda", n: int = 8192) -> dict:
    """n x n x n bf16 matmul of random data: TFLOP/s (2·n³ FLOPs)."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    c = torch.empty(n, n, dtype=torch.bfloat16, device=device)
    ms = _median_ms(lambda: torch.matmul(a, b, out=c))
    return {"n": n, "ms": ms, "tflops": 2 * n**3 / ms / 1e9}
