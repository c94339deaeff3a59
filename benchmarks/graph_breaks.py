"""Graph breaks of the fast path under ``torch.compile``: ``torch._dynamo.explain`` and a ``fullgraph=True`` trial.

    python -m benchmarks.graph_breaks                       # dat_tiny, datpp_tiny and DeformableAttention
    python -m benchmarks.graph_breaks --models dat_tiny --modes eval

For each model (fast path) and mode (eval / train) it reports the number of graphs and graph breaks and, for every
break, the reason and the user frames (file:line function) where it happened; then it runs
``torch.compile(model, fullgraph=True, backend="eager")`` (dynamo only, no inductor, so it is quick) and reports
whether that succeeds or the error it raises. Results go to stdout and ``--out``/graph_breaks.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

from datvit.tools.benchmark import common

_ROOT = Path(__file__).resolve().parents[1]


def _frames(stack) -> list[str]:
    out = []
    for f in stack or []:
        filename = getattr(f, "filename", "?")
        try:
            filename = str(Path(filename).resolve().relative_to(_ROOT))
        except ValueError:
            pass
        out.append(f"{filename}:{getattr(f, 'lineno', '?')} in {getattr(f, 'name', '?')}: "
                   f"{(getattr(f, 'line', '') or '').strip()}")
    return out


def explain(fn, *inputs) -> dict[str, Any]:
    import torch

    torch._dynamo.reset()
    result: dict[str, Any] = {}
    try:
        ex = torch._dynamo.explain(fn)(*inputs)
        result.update(graph_count=ex.graph_count, graph_break_count=ex.graph_break_count,
                      ops_per_graph=[len(ops) for ops in ex.ops_per_graph or []])
        breaks = []
        for r in ex.break_reasons:
            breaks.append({"reason": str(r.reason).strip(), "user_stack": _frames(getattr(r, "user_stack", None))})
        # the same break is reported once per call site; keep the distinct ones with a count
        distinct: dict[str, dict] = {}
        for b in breaks:
            key = b["reason"] + "|" + "|".join(b["user_stack"][-2:])
            if key in distinct:
                distinct[key]["count"] += 1
            else:
                distinct[key] = dict(b, count=1)
        result["breaks"] = list(distinct.values())
    except Exception as exc:  # noqa: BLE001 - report whatever dynamo raised
        result["explain_error"] = f"{type(exc).__name__}: {exc}"[:4000]
    torch._dynamo.reset()
    try:
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        compiled(*inputs)
        result["fullgraph"] = "ok"
    except Exception as exc:  # noqa: BLE001
        msg = f"{type(exc).__name__}: {exc}"
        result["fullgraph"] = "error"
        result["fullgraph_error"] = msg[:4000]
        result["fullgraph_traceback_tail"] = "".join(traceback.format_exception(exc))[-3000:]
    torch._dynamo.reset()
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.graph_breaks", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="dat_tiny,datpp_tiny")
    p.add_argument("--modes", default="eval,train")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--no-module", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(_ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import torch

    common.set_threads(args.threads)
    device = torch.device("cpu")
    report: dict[str, Any] = {"torch": torch.__version__, "cases": {}}
    cases = []
    for name in [common.resolve_model_name(m) for m in args.models.split(",") if m]:
        model = common.build_model(common.Subject(name, "fast") if common.is_dat(name) else common.Subject(name),
                                   device, args.img_size)
        x, y = common.random_batch(args.batch, args.img_size, device)
        for mode in [m for m in args.modes.split(",") if m]:
            if mode == "eval":
                def fn(inp, model=model):
                    with torch.no_grad():
                        return model(inp)
                model.eval()
            else:
                def fn(inp, model=model):
                    return model(inp)
                model.train()
            cases.append((f"{name}:fast:{mode}", fn, (x,)))
    if not args.no_module:
        from datvit.layers import DeformableAttention

        from .run import MODULE_CONFIG
        m = DeformableAttention(**MODULE_CONFIG)
        xm = torch.randn(2, MODULE_CONFIG["fmap_size"], MODULE_CONFIG["fmap_size"], MODULE_CONFIG["dim"])
        cases.append(("DeformableAttention:fast", m, (xm,)))

    for label, fn, inputs in cases:
        print(f"=== {label} ===", flush=True)
        res = explain(fn, *inputs)
        report["cases"][label] = res
        if "explain_error" in res:
            print(f"explain failed: {res['explain_error']}")
        else:
            print(f"graphs {res['graph_count']}, graph breaks {res['graph_break_count']}, ops per graph "
                  f"{res['ops_per_graph']}")
            for b in res["breaks"]:
                print(f"  break ×{b['count']}: {b['reason']}")
                for fr in b["user_stack"][-4:]:
                    print(f"      at {fr}")
        print(f"fullgraph=True: {res['fullgraph']}" + (f" — {res['fullgraph_error'][:1500]}"
                                                        if res["fullgraph"] != "ok" else ""), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph_breaks.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
