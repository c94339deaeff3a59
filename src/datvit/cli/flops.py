"""``datvit flops``: parameters and multiply-adds (the papers' "FLOPs") per stage and in total.

Counted from a trace of the real model on the meta device (nothing is computed; a second or two per variant),
in the papers' convention: fvcore's count of the authors' code — convolutions, linear layers and matmuls one per
multiply-add, LayerNorm 5 per element, bilinear sampling 4 per output — on the reference path (neighborhood
attention: k×k keys per query).
Without --model it lists the eight released variants beside the published numbers; --ablation reproduces the
paper's table of which stages use deformable attention."""

from __future__ import annotations

import argparse
import json

from ._errors import run_with_user_errors
from ._run_args import UpdateKwargs

EPILOG = """examples:
  datvit flops                                    # the eight released variants, ours vs published
  datvit flops --model datpp_tiny                 # per stage: stem, stages 1-4 (with their downsampling), head
  datvit flops --model dat_tiny --img-size 320 256 --json
  datvit flops --model dat_tiny --model-kwargs depths='[2,2,18,2]'
  datvit flops --model-config my_dat.yaml         # a custom configuration (DAT constructor arguments)
  datvit flops --ablation                         # D blocks in stages 1-4 … none, beside the paper's table

--img-size sets the input only; the model keeps its position tables at its own img_size (as datpp_base_384,
built at 224 and run at 384). Build at another size with --model-kwargs img_size=N.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "flops",
        help="parameters and FLOPs per stage, as the papers count them",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=None,
        help="registered variant (dat_tiny, datpp_base_384, ...) or preset (dat_nano); default: all released variants",
    )
    p.add_argument(
        "--model-config",
        default=None,
        metavar="FILE",
        help="YAML/JSON of DAT constructor arguments (on top of --model's, if given)",
    )
    p.add_argument(
        "--model-kwargs",
        nargs="*",
        default={},
        action=UpdateKwargs,
        metavar="KEY=VALUE",
        help="DAT constructor arguments, e.g. dims='[64,128,256,512]' depths='[2,2,6,2]'",
    )
    p.add_argument(
        "--img-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="input height [width] (default: the variant's evaluation size)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default 1000)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default 3)")
    p.add_argument(
        "--path",
        default="reference",
        choices=("reference", "fast"),
        help="which path to trace: reference (the papers' count, default) or fast (what the fast "
        "path's tiled neighborhood attention computes)",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="the DAT paper's stage ablation: D blocks in stages 1-4, 2-4, 3-4, 4, none (DAT-T, 224)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_with_user_errors("flops", lambda: flops(args))


def _input_size(args: argparse.Namespace, default: tuple[int, int, int], in_chans: int) -> tuple[int, int, int]:
    if not args.img_size:
        return (in_chans,) + tuple(default[1:])
    if len(args.img_size) > 2:
        raise ValueError(f"--img-size takes H or H W, got {len(args.img_size)} numbers")
    h, w = args.img_size[0], args.img_size[-1]
    if h < 1 or w < 1:
        raise ValueError(f"--img-size must be positive, got {h}×{w}")
    return (in_chans, h, w)


def _report_for(args: argparse.Namespace, name: str, config: dict):
    import datvit

    from ..models.factory import resolve_model_kwargs
    from ..tools.flops import build_on_meta, count_flops, variant_input_size

    kwargs = resolve_model_kwargs(name, config, args.model_kwargs, num_classes=args.num_classes, in_chans=args.in_chans)
    try:
        model = build_on_meta(kwargs)
    except TypeError as e:  # an argument DAT does not take
        raise ValueError(f"cannot build {name}: {e}") from None
    in_chans = int(kwargs.get("in_chans", 3))
    custom = {**config, **args.model_kwargs}
    if name in datvit.list_models() and "img_size" not in custom:
        default = variant_input_size(name)
    else:
        size = int(kwargs.get("img_size", 224))
        default = (in_chans, size, size)
    return count_flops(model, _input_size(args, default, in_chans), name=name, path=args.path)


def flops(args: argparse.Namespace) -> None:
    import datvit

    from ..tools.flops import count_ablation, format_ablation, published_for

    if args.ablation:
        if args.model or args.model_config or args.model_kwargs or args.img_size:
            raise ValueError(
                "--ablation counts the paper's fixed DAT-T settings at 224; it takes no --model, "
                "--model-config, --model-kwargs or --img-size"
            )
        results = count_ablation()
        if args.json:
            print(
                json.dumps(
                    [
                        dict(
                            d_stages=list(e.d_stages),
                            params=r.params,
                            macs=r.macs,
                            gflops=r.gflops,
                            authors_params_m=e.authors_params_m,
                            authors_gflops=e.authors_gflops,
                            published_params_m=e.published_params_m,
                            published_gflops=e.published_gflops,
                            top1=e.top1,
                        )
                        for e, r in results
                    ],
                    indent=2,
                )
            )
        else:
            print(format_ablation(results))
        return

    config: dict = {}
    if args.model_config:
        from ..models.factory import load_model_config

        config = load_model_config(args.model_config)
    if args.model or config or args.model_kwargs:
        report = _report_for(args, args.model or "custom", config)
        print(report.to_json() if args.json else report.format_table())
        return

    reports = [_report_for(args, name, {}) for name in datvit.list_models()]
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    print("The released variants, multiply-adds (the papers' FLOPs, fvcore convention) at batch 1")
    print(f"{'model':16s}  {'input':>9s}  {'params':>9s}  {'FLOPs':>8s}  {'paper':>11s}  {'Δ FLOPs':>8s}")
    for r in reports:
        pub = published_for(r.model, r.input_size)
        paper = f"{pub[0]:g}M/{pub[1]:g}G" if pub else "-"
        delta = f"{100 * (r.gflops / pub[1] - 1):+.2f}%" if pub else "-"
        print(
            f"{r.model:16s}  {r.input_size[1]:>4d}×{r.input_size[2]:<4d}  {r.params / 1e6:8.3f}M  "
            f"{r.gflops:7.3f}G  {paper:>11s}  {delta:>8s}"
        )
