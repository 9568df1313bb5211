"""The machine's roofline, measured: copy bandwidth and matmul rate, on this device, now.

Datasheet numbers are leads; the benchmarks report every measurement as a fraction of these two measured
ceilings (taken in the same run):
  * copy bandwidth: a large copy, counting bytes read + bytes written;
  * matmul rate: an n x n x n matrix product of random data (2·n³ FLOPs), bf16 on a GPU, float32 on a CPU.
On CUDA both are timed with `triton.testing.do_bench` (warm-up, L2 flushed before every run, median); on a CPU
with perf_counter (median of repetitions, with torch's current thread count), and labelled so.

`python -m mla_tutorial roofline` measures them and plots every stage of the ladder as a point (arithmetic
intensity against achieved FLOP/s) under both ceilings (`measure.stage_bench`, `measure.plots`).
"""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import subprocess
import time
from typing import Any

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
        info.update(card=platform.processor() or platform.machine() or "cpu", driver="none",
                    cpu_threads=torch.get_num_threads())
    return info


def _median_ms(fn, device: torch.device | str = "cuda", reps: int = 20) -> float:
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure_copy_bandwidth(device: torch.device | str = "cuda", nbytes: int | None = None) -> dict:
    """A copy of `nbytes` of random data (2 GiB on CUDA, 256 MiB on a CPU): GB/s counting bytes read + written."""
    on_cuda = torch.device(device).type == "cuda"
    nbytes = nbytes or (2 * 2**30 if on_cuda else 256 * 2**20)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    src = torch.randn(nbytes // torch.empty((), dtype=dtype).element_size(), device=device).to(dtype)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes_moved": moved, "ms": ms, "gbps": moved / ms / 1e6, "dtype": str(dtype).removeprefix("torch.")}


def measure_matmul_tflops(device: torch.device | str = "cuda", n: int | None = None) -> dict:
    """n x n x n matmul of random data (bf16, n = 8192 on CUDA; float32, n = 2048 on a CPU): TFLOP/s (2·n³)."""
    on_cuda = torch.device(device).type == "cuda"
    n = n or (8192 if on_cuda else 2048)
    dtype = torch.bfloat16 if on_cuda else torch.float32
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, dtype=dtype, device=device)
    ms = _median_ms(lambda: torch.matmul(a, b, out=c), device, reps=5)
    return {"n": n, "ms": ms, "tflops": 2 * n**3 / ms / 1e9, "dtype": str(dtype).removeprefix("torch.")}


def measure_ceilings(device: torch.device | str, bandwidth_gbs: float | None = None,
                     peak_tflops: float | None = None) -> dict[str, Any]:
    """The roofline of this machine: {"bytes_per_s", "flops_per_s", "source", "copy", "matmul", "device"}.

    Given values win (each one replaces its measurement); the others are measured here, now."""
    device = torch.device(device)
    result: dict[str, Any] = {"device": str(device), "given": {}}
    if bandwidth_gbs is None:
        result["copy"] = measure_copy_bandwidth(device)
        bandwidth_gbs = result["copy"]["gbps"]
    else:
        result["given"]["bandwidth_gbs"] = bandwidth_gbs
    if peak_tflops is None:
        result["matmul"] = measure_matmul_tflops(device)
        peak_tflops = result["matmul"]["tflops"]
    else:
        result["given"]["peak_tflops"] = peak_tflops
    measured = [k for k in ("copy", "matmul") if k in result]
    what = "measured: " + ", ".join(
        {"copy": f"{'device' if device.type == 'cuda' else 'CPU'} copy",
         "matmul": f"{result['matmul']['n']}³ {result['matmul']['dtype']} matmul" if "matmul" in result else ""}[k]
        for k in measured) if measured else "given"
    if result["given"] and measured:
        what += "; given: " + ", ".join(result["given"])
    return result | {"bytes_per_s": bandwidth_gbs * 1e9, "flops_per_s": peak_tflops * 1e12, "source": what}


__all__ = ["device_info", "measure_ceilings", "measure_copy_bandwidth", "measure_matmul_tflops"]
