"""Export every released variant at its native size (random weights) to ONNX, torch.export and TorchScript; print
max |exported − eager| on a random batch of 2 and the seconds each export took. Not a test: minutes per variant.

    python -m datvit.tools.benchmark.export_all                  # all 8 variants, all 3 formats
    python -m datvit.tools.benchmark.export_all --models dat_tiny datpp_tiny --formats onnx torch-export
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

import datvit
from datvit.tools.export import FORMATS, SUFFIXES, check_export, export_model, resolve_input_size, timed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=datvit.list_models())
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"{'model':<16} {'format':<13} {'size':<10} {'export s':>9} {'check s':>8} {'max |Δ|':>10} {'max |logit|':>11}",
          flush=True)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = datvit.create_model(name).eval()
            size = resolve_input_size(model, [model.pretrained_cfg["input_size"][-1]])
            for fmt in args.formats:
                path = os.path.join(tmp, name + SUFFIXES[fmt])
                try:
                    _, exported = timed(export_model, model, fmt, path, size)
                    check, checked = timed(check_export, path, fmt, model, size, batch=2)
                    print(f"{name:<16} {fmt:<13} {size[1]}×{size[2]:<6} {exported:9.1f} {checked:8.1f} "
                          f"{check.max_abs_diff:10.2e} {check.output_max_abs:11.3g}", flush=True)
                except Exception as e:  # report and go on with the next one
                    failures += 1
                    print(f"{name:<16} {fmt:<13} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                          flush=True)
                finally:
                    if os.path.exists(path):
                        os.unlink(path)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
