"""Property-based checks (hypothesis) of whole models of both families — the reduced configurations of the
reference fixtures with one block per stage, still every block kind (L, S, D for DAT; N, D with LPU, DWC-MLP and
conv stem for DAT++):
for random input sizes (at least the minimum, non-square, not multiples of 32 or of the window), batch sizes and
dtypes, the fast path equals the reference path and a batch equals its images run one by one.

Examples are derandomized (the same in every run) and few, with no deadline, so the file stays fast and
deterministic; ``HYPOTHESIS_PROFILE=thorough`` runs more.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_close_scaled, reduced_kwargs
from datvit.models import DAT

# applied per test (a loaded profile would change other files' hypothesis tests too)
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
SETTINGS = settings(
    max_examples=60 if THOROUGH else 4,
    deadline=None,
    derandomize=not THOROUGH,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


# one block per stage keeps every block kind of the family (L/S/D; N/D) at a quarter of the cost
STAGES = {"dat": [["L"], ["S"], ["L"], ["D"]], "datpp": [["N"], ["D"], ["N"], ["D"]]}


@lru_cache(maxsize=None)
def model(family: str) -> DAT:
    torch.manual_seed(0)
    return DAT(
        **reduced_kwargs(
            family, img_size=48, num_classes=5, drop_path_rate=0.0, depths=[1, 1, 1, 1], stage_spec=STAGES[family]
        )
    ).eval()


def sizes(min_size: int = 32, max_size: int = 52):
    """(H, W): non-square, neither a multiple of 32."""
    side = st.integers(min_size, max_size).filter(lambda s: s % 32)
    return st.tuples(side, side).filter(lambda hw: hw[0] != hw[1])


def run(m: DAT, x: torch.Tensor, reference: bool) -> torch.Tensor:
    m.set_reference(reference)
    try:
        with torch.no_grad():
            return m(x)
    finally:
        m.set_reference(False)


@pytest.mark.parametrize("family", ["dat", "datpp"])
@SETTINGS
@given(
    hw=sizes(),
    batch=st.integers(1, 2),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_fast_path_equals_reference_and_batch_equals_single(family, hw, batch, dtype, seed):
    m = model(family).to(dtype)
    try:
        x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed)).to(dtype)
        fast = run(m, x, reference=False)
        assert fast.shape == (batch, 5) and torch.isfinite(fast).all()
        tol = TOLERANCE[dtype]
        assert_close_scaled(fast, run(m, x, reference=True), tol, f"{family} fast vs reference {hw} {dtype}")
        for i in range(batch):
            assert_close_scaled(
                fast[i : i + 1], run(m, x[i : i + 1], reference=False), tol, f"{family} batch vs single, image {i}"
            )
    finally:
        m.float()


@pytest.mark.parametrize("family", ["dat", "datpp"])
@settings(SETTINGS, max_examples=2)
@given(hw=sizes(), batch=st.integers(1, 2))
def test_bfloat16_runs(family, hw, batch):
    m = model(family).to(torch.bfloat16)
    try:
        with torch.no_grad():
            out = m(torch.randn(batch, 3, *hw).to(torch.bfloat16))
        assert out.shape == (batch, 5) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    finally:
        m.float()
