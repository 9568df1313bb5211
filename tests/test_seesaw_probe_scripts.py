"""The seesaw tiles' GPU probe scripts (bf16 and FP8), on the CPU: their variant tables name real GluonConfig
switches, an unknown name is refused before any GPU work, and the trace's summary reads cycle stamps as intended (a
synthetic trace)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mla_tutorial.kernels.v5_gluon import GluonConfig

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_fp8_seesaw_probe  # noqa: E402
import gpu_seesaw_probe  # noqa: E402
import gpu_seesaw_trace  # noqa: E402


@pytest.mark.parametrize("table", [gpu_seesaw_probe.VARIANTS, gpu_seesaw_trace.CONFIGS,
                                   gpu_fp8_seesaw_probe.VARIANTS])
def test_every_variant_is_a_valid_config(table):
    for name, fields in table.items():
        config = GluonConfig(**fields)
        assert all(getattr(config, k) == v for k, v in fields.items()), name
        assert config != GluonConfig() or not fields, f"{name} is the default tile under another name"


@pytest.mark.parametrize("script,args", [("gpu_seesaw_probe.py", ["--out", "x.json", "--check-variants", "nope"]),
                                         ("gpu_seesaw_trace.py", ["--configs", "base,nope"]),
                                         ("gpu_fp8_seesaw_probe.py", ["--out", "x.json", "--variants", "nope"])])
def test_unknown_variant_is_refused_before_any_gpu_work(script, args, tmp_path):
    env_path = f"{SCRIPTS.parent / 'src'}:{SCRIPTS.parent / 'tests'}"
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 2 and "unknown ['nope']" in done.stderr, done.stderr[-500:]


def test_trace_summary_reads_the_stamps():
    """Pairs 5000 cycles apart, event e at 100·e cycles into its pair; a request starts at pair 20, which the
    cross-pair intervals leave out; program starts and request ends are read from their own stamps."""
    t = torch.zeros(3, 48, 32, dtype=torch.int64)
    for p in range(40):
        t[:, p, :21] = 1000 + 5000 * p + 100 * torch.arange(21)
    t[:, 0, 21:26] = torch.tensor([10, 20, 30, 400, 900])  # entries, then WG0's request start and Q ready
    t[:, 0, 28:30] = torch.tensor([450, 950])
    t[:, 20, 24] = 1
    s = gpu_seesaw_trace.summarize(t)
    period = s["pair period (wg0 start to next start)"]
    assert period["median"] == 5000 and period["n"] == 3 * (40 - 2 - 1 - 1)  # skip 2, the last, the edge at 20
    assert s["wg0 wait A left"]["median"] == 600  # event 6 - event 0
    assert s["wg0 entry to request start"]["median"] == 390 and s["wg0 request start to Q ready"]["median"] == 500
    assert "wg0 entry to its schedule row (loop entered)" not in s  # a 32-event buffer: stamped before events 34-35
    t36 = torch.cat([t, torch.zeros(3, 48, 4, dtype=torch.int64)], dim=2)
    t36[:, 0, 34:36] = torch.tensor([200, 40])  # the loop entered: wg0 190 cycles after its entry, wg1 20
    s = gpu_seesaw_trace.summarize(t36)
    assert s["wg0 entry to its schedule row (loop entered)"]["median"] == 190
    assert s["wg0 loop entered to request start"]["median"] == 200
    assert s["wg1 loop entered to request start"]["median"] == 410


@pytest.mark.parametrize("buffer", [torch.zeros(10, dtype=torch.int64), torch.zeros(4 * 48 * 32, dtype=torch.int32),
                                    torch.zeros(4 * 48 * 64, dtype=torch.int64)[::2]])
def test_trace_buffer_is_checked_before_any_launch(buffer, monkeypatch):
    """The TRACE probe's buffer (too small, not int64, not contiguous) is refused before the kernel could write past
    it; the check comes before anything is launched, so it runs on the CPU too."""
    from types import SimpleNamespace

    from mla_tutorial.kernels import v5_seesaw

    monkeypatch.setattr(v5_seesaw, "TRACE_BUFFER", buffer)
    dims = SimpleNamespace(rows_per_kv=64)
    meta = torch.zeros(4, 8, dtype=torch.int32)
    q = torch.zeros(1, 1, 64, 576, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="TRACE_BUFFER must be a contiguous int64 tensor"):
        v5_seesaw.launch_v5_seesaw(q, None, None, None, dims, False, meta, None, None, None, None, None, None)
