"""Export every released variant at its native size (random weights) to ONNX, torch.export and TorchScript; print
max |exported − eager| on a random batch of 2 and the seconds each export took (``datvit bench export-all``). Not a
test: minutes per variant.

    datvit bench export-all                  # all 8 variants, all 3 formats
    datvit bench export-all --models dat_tiny,datpp_tiny --formats onnx,torch-export
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

import datvit
from datvit.tools.export import FORMATS, SUFFIXES, check_export, export_model, resolve_input_size, timed

from . import common


@dataclass(frozen=True, kw_only=True)
class ExportAllConfig:
    """What :func:`run` exports: ``models`` (empty: every released variant) to each of ``formats`` (from
    :data:`datvit.tools.export.FORMATS`), with ``threads`` torch threads (None: torch's)."""

    models: tuple[str, ...] = ()
    formats: tuple[str, ...] = FORMATS
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        common.freeze_sequences(self, ("models", "formats"))


def run(config: ExportAllConfig) -> int:
    """Export and check every model × format, one line each; 0 when all succeed, 1 otherwise. ValueError for an
    unknown format."""
    unknown = [f for f in config.formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if config.threads:
        torch.set_num_threads(config.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(
        f"{'model':<16} {'format':<13} {'size':<10} {'export s':>9} {'check s':>8} {'max |Δ|':>10} {'max |logit|':>11}",
        flush=True,
    )
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in config.models or datvit.list_models():
            torch.manual_seed(0)
            model = datvit.create_model(name).eval()
            size = resolve_input_size(model, [model.pretrained_cfg["input_size"][-1]])
            for fmt in config.formats:
                path = os.path.join(tmp, name + SUFFIXES[fmt])
                try:
                    _, exported = timed(export_model, model, fmt, path, size)
                    check, checked = timed(check_export, path, fmt, model, size, batch=2)
                    print(
                        f"{name:<16} {fmt:<13} {size[1]}×{size[2]:<6} {exported:9.1f} {checked:8.1f} "
                        f"{check.max_abs_diff:10.2e} {check.output_max_abs:11.3g}",
                        flush=True,
                    )
                except Exception as e:  # report and go on with the next one
                    failures += 1
                    print(
                        f"{name:<16} {fmt:<13} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True
                    )
                finally:
                    if os.path.exists(path):
                        os.unlink(path)
    return 1 if failures else 0
