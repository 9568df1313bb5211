"""Error metrics for comparing one stage's output with its predecessor's.

Every comparison in the tests, the tour and the notebooks reports the same three numbers, computed in float64:
- max_abs:  max |a − b|
- rel_frob: ‖a − b‖_F / ‖b‖_F (b is the reference)
- cosine:   a·b / (‖a‖·‖b‖) over the flattened tensors
NaN anywhere makes max_abs and rel_frob NaN, so it can never pass a `<` check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class ErrorMetrics:
    max_abs: float
    rel_frob: float
    cosine: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"max_abs={self.max_abs:.3e} rel_frob={self.rel_frob:.3e} cosine={self.cosine:.9f}"


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> ErrorMetrics:
    """Compare out with ref (same shape); see the module docstring."""
    if out.shape != ref.shape:
        raise ValueError(f"out has shape {list(out.shape)} but ref has {list(ref.shape)}")
    a = out.detach().to(device="cpu", dtype=torch.float64).flatten()
    b = ref.detach().to(device="cpu", dtype=torch.float64).flatten()
    if a.numel() == 0:
        return ErrorMetrics(0.0, 0.0, 1.0)
    diff = a - b
    max_abs = float(diff.abs().max()) if not torch.isnan(diff).any() else float("nan")
    ref_norm = float(b.norm())
    rel = float(diff.norm()) / ref_norm if ref_norm > 0 else float(diff.norm())
    denom = float(a.norm()) * ref_norm
    cosine = float(a @ b) / denom if denom > 0 else float(torch.equal(a, b))
    return ErrorMetrics(max_abs, rel, cosine)
