"""``datvit bench``: the speed/memory benchmark (:mod:`datvit.tools.benchmark.run`), and ``datvit bench <tool>``:
the measuring tools around it (profile, levers, deploy, runtimes, cuda-check, export-all). The harness is part of the
package, so this works from any directory.

Every parser here has ``argparse.SUPPRESS`` as its default: the parsed namespace holds only the flags given, and
the defaults live in one place, the library's config dataclasses (the help texts read them from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from typing import Any, Callable

from ._run_args import config_from_args, run_parser

EXAMPLES = """examples:
  datvit bench                                    # full CPU run (20-40 min on 2 cores): tables, JSON, PNG
  datvit bench --quick --models dat_tiny,swin     # a look in a few minutes
  datvit bench --no-compile --models dat_tiny,swin --paths fast --batch-sizes 32 --train-batch-sizes 32 \\
      --train-runs 3                             # DAT-T vs Swin-T, training steps interleaved in 3 processes
  datvit bench profile --models dat_tiny --kinds inference --batch-size 8   # where the time goes
  datvit bench cuda-check --device cpu --img-size 64 --no-speed             # the GPU checks, tried on CPU
"""

USAGE = """%(prog)s [options]                 the benchmark
       %(prog)s <tool> [tool options]     a tool: profile, levers, deploy, runtimes, cuda-check, export-all"""


# -- flag types: comma-separated lists ---------------------------------------------------------------------------


def names(text: str) -> tuple[str, ...]:
    """``a,b,c`` → ("a", "b", "c"); '' → () (none)."""
    return tuple(t for t in text.replace(" ", "").split(",") if t)


def sizes(text: str) -> tuple[int, ...]:
    """``1,32`` → (1, 32); '', 0 and other non-positive entries are left out (none)."""
    try:
        values = tuple(int(t) for t in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return tuple(v for v in values if v > 0)


class ExtendNames(argparse.Action):
    """``--models a b`` and ``--models a,b`` alike: the values of a ``nargs="+"`` flag of :func:`names`, as one
    tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(n for value in values for n in value))


def _default(cls: type, name: str) -> str:
    """The default of field ``name`` of the config ``cls``, as its flag would be written."""
    value = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _defaults(cls: type) -> Callable[[str], str]:
    """``name`` → the default of that field of ``cls`` as text (:func:`_default`), for help strings."""
    return lambda name: _default(cls, name)


def _output_argument(p: argparse.ArgumentParser, cls: type) -> None:
    p.add_argument(
        "--output", "--out", dest="output", metavar="DIR", help=f"output directory (default {_default(cls, 'output')})"
    )


def _allocator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allocator",
        choices=("tuned", "system"),
        help="CPU memory allocator for every subject: 'tuned' keeps freed tensor memory in malloc's heap "
        "(datvit.tune_cpu_allocator, what the datvit CLI does), 'system' leaves glibc's default "
        "(a fresh mmap and page faults for every large tensor) (default tuned)",
    )


def _batch_size_argument(p: argparse.ArgumentParser, cls: type, what: str) -> None:
    p.add_argument(
        "-b",
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=int,
        help=f"{what} (default {_default(cls, 'batch_size')})",
    )


# -- datvit bench ------------------------------------------------------------------------------------------------


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags, one per field of :class:`datvit.tools.benchmark.run.BenchConfig`."""
    from ..deploy import COMPILE_MODES
    from ..tools.benchmark.run import BenchConfig

    d = _defaults(BenchConfig)

    g = p.add_argument_group("what is measured")
    g.add_argument(
        "--models",
        type=names,
        help="comma-separated timm names; DAT models get one entry per --paths; aliases swin, convnext "
        f"(default {d('models')})",
    )
    g.add_argument("--paths", type=names, help=f"DAT implementations to time (default {d('paths')})")
    g.add_argument("--batch-sizes", type=sizes, help="inference batch sizes (default 1,32)")
    g.add_argument("--train-batch-sizes", type=sizes, help="training-step batch sizes; '' or 0 for none (default 32)")
    g.add_argument(
        "--modes",
        type=names,
        help="comma-separated from eager (fp32), compile (fp32 torch.compile), bf16 (autocast), "
        "bf16-compile; default eager,compile on CPU and eager,bf16,compile on CUDA",
    )
    g.add_argument("--img-size", type=int, help=f"input resolution (default {d('img_size')})")
    g.add_argument(
        "--quick",
        action="store_true",
        help="a fast look: batches 1,8, training at 8, 2 iterations, no compile, one matmul size",
    )
    g.add_argument(
        "--skip",
        type=names,
        help="comma-separated measurements to leave out, as LABEL:KIND with KIND inference or train and "
        "LABEL as in the tables (dat_tiny:reference, swin_t, ...), e.g. datpp_tiny:reference:train "
        "(DAT++'s reference neighborhood attention needs ~16 GB to train at batch 32)",
    )

    g = p.add_argument_group("torch.compile")
    g.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip torch.compile (it can take many minutes on CPU)",
    )
    g.add_argument(
        "--compile-models",
        type=names,
        help=f"models to torch.compile (fast path for DAT; default {d('compile_models')}; e.g. "
        "dat_tiny,datpp_tiny,swin,convnext for all under the same treatment)",
    )
    g.add_argument("--compile-kinds", type=names, help=f"inference, train (default {d('compile_kinds')})")
    g.add_argument(
        "--compile-batch-sizes",
        type=sizes,
        help="batch sizes for compile runs (default: the largest inference and training batch)",
    )
    g.add_argument("--compile-mode", choices=COMPILE_MODES, help=f"torch.compile mode (default {d('compile_mode')})")
    g.add_argument(
        "--no-freezing",
        dest="freezing",
        action="store_false",
        help="compile inference without inductor freezing (default: with it, as datvit.optimize_for_inference deploys)",
    )
    g.add_argument(
        "--compile-timeout",
        type=float,
        help=f"seconds per compile measurement before it is abandoned (default {d('compile_timeout')})",
    )

    g = p.add_argument_group("timing")
    g.add_argument(
        "--bench-iters",
        "--iters",
        dest="iters",
        type=int,
        help=f"timed iterations per measurement (×4 for batches below 8; default {d('iters')})",
    )
    g.add_argument("--warmup", type=int, help=f"warm-up iterations per measurement (default {d('warmup')})")
    g.add_argument("--device", help=f"auto (cuda if available), cpu or cuda[:i] (default {d('device')})")
    g.add_argument("--threads", type=int, help="torch threads (default: the usable CPU count)")
    g.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds each timed call may wait for other processes to go quiet (< 0.3 cores busy) on a "
        "shared machine (default 0: do not wait; background load is recorded either way)",
    )
    _allocator_argument(g)

    g = p.add_argument_group("training steps and memory")
    g.add_argument(
        "--train-iters",
        type=int,
        help="timed training steps per model (default: --iters); one or more untimed steps come first",
    )
    g.add_argument(
        "--train-runs",
        type=int,
        help="fresh processes in which all training subjects step interleaved (one step each per round); "
        f"the ratios between subjects are reported per run and as median and spread "
        f"(default {d('train_runs')})",
    )
    g.add_argument(
        "--no-train-memory",
        dest="train_memory",
        action="store_false",
        help="skip the per-subject processes that measure the peak memory of a training step",
    )
    g.add_argument(
        "--train-timeout",
        type=float,
        help=f"seconds per training process before it is abandoned (default {d('train_timeout')})",
    )
    g.add_argument(
        "--memory-fraction",
        type=float,
        help="cap each training process's memory at this fraction of the memory available when it "
        f"starts, so that a model too big for the machine fails cleanly (default "
        f"{d('memory_fraction')}; 0: no cap)",
    )

    g = p.add_argument_group("other measurements")
    g.add_argument(
        "--onnx-models",
        type=names,
        help="models also timed in onnxruntime (CPU, fp32, exported with datvit.tools.export.export_onnx) "
        f"next to PyTorch eager inference; '' for none (default {d('onnx_models')})",
    )
    g.add_argument(
        "--no-module", dest="module", action="store_false", help="skip the DeformableAttention module benchmark"
    )
    g.add_argument("--module-batch", type=int, help=f"batch of the module benchmark (default {d('module_batch')})")
    g.add_argument("--no-flops", dest="flops", action="store_false", help="skip FLOP counting (then no GFLOP/s)")
    g.add_argument("--matmul-sizes", type=sizes, help=f"square sizes for the matmul peak (default {d('matmul_sizes')})")

    g = p.add_argument_group("report")
    _output_argument(g, BenchConfig)
    g.add_argument("--no-chart", dest="chart", action="store_false", help="do not write the PNG")
    g.add_argument(
        "--note",
        dest="notes",
        action="append",
        metavar="TEXT",
        help="free text stored in the report's notes (repeatable), e.g. what code was measured",
    )


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, words: tuple[str, ...]) -> str:
    """The flags given to ``parser`` (the namespace holds only those) as one command line after ``words``: each
    flag under its first name, in the parser's order, so a report says how to measure it again."""
    given = vars(args)
    out = list(words)
    for action in parser._actions:
        if not action.option_strings or action.dest not in given or isinstance(action, argparse._HelpAction):
            continue
        value, flag = given[action.dest], action.option_strings[0]
        if action.nargs == 0:
            out.append(flag)
        elif isinstance(action, argparse._AppendAction):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return shlex.join(out)


def bench_config(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The parsed flags as the library's :class:`datvit.tools.benchmark.run.BenchConfig`."""
    from ..tools.benchmark.run import BenchConfig

    return config_from_args(BenchConfig, args, command_line=command_line(parser, args, ("datvit", "bench")))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from ..tools.benchmark.run import run as run_benchmark
    from ._errors import run_with_user_errors

    config = bench_config(parser, args)
    return run_with_user_errors("bench", lambda: run_benchmark(config))


# -- datvit bench <tool> -----------------------------------------------------------------------------------------


def add_profile_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.benchmark.profile import ProfileConfig

    d = _defaults(ProfileConfig)
    p.add_argument("--models", type=names, help=f"models to profile (default {d('models')})")
    p.add_argument("--paths", type=names, help=f"DAT paths to profile: fast, reference (default {d('paths')})")
    p.add_argument("--kinds", type=names, help=f"inference, train (default {d('kinds')})")
    _batch_size_argument(p, ProfileConfig, "batch of the model profiles")
    p.add_argument("--img-size", type=int, help=f"input resolution (default {d('img_size')})")
    p.add_argument(
        "--module-batch", type=int, help=f"batch of the DeformableAttention profiles (default {d('module_batch')})"
    )
    p.add_argument("--no-module", dest="module", action="store_false", help="leave out the module profiles")
    p.add_argument("--only-module", action="store_true", help="only the module profiles")
    p.add_argument("--rows", type=int, help=f"ops per table (default {d('rows')})")
    p.add_argument("--threads", type=int, help="torch threads (default: the usable CPU count)")
    p.add_argument("--device", help=f"auto (cuda if available), cpu or cuda[:i] (default {d('device')})")
    _allocator_argument(p)
    _output_argument(p, ProfileConfig)


def add_levers_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.benchmark.levers import LEVERS, LeversConfig

    d = _defaults(LeversConfig)
    p.add_argument("levers", nargs="*", default=(), metavar="LEVER", help=f"from {', '.join(LEVERS)} (default: all)")
    _batch_size_argument(p, LeversConfig, "batch of the measured steps")
    p.add_argument("--pairs", type=int, help=f"interleaved rounds (default {d('pairs')})")
    p.add_argument("--models", type=names, help=f"models of the adamw lever (default {d('models')})")
    p.add_argument("--threads", type=int, help="torch threads (default: the usable CPU count)")
    _allocator_argument(p)


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.benchmark.deploy import TREATMENTS, DeployConfig

    d = _defaults(DeployConfig)
    p.add_argument("--checkpoint", metavar="FILE", help="datvit checkpoint whose test-set accuracy is compared")
    _batch_size_argument(p, DeployConfig, "evaluation batch of the checkpoint accuracy")
    p.add_argument(
        "--speed-models", type=names, help=f"models timed at 224×224 ('' to skip; default {d('speed_models')})"
    )
    p.add_argument("--speed-batch", type=int, help=f"batch of the speed part (default {d('speed_batch')})")
    p.add_argument(
        "--bench-iters",
        "--iters",
        dest="iters",
        type=int,
        help=f"timed rounds of the speed part (default {d('iters')})",
    )
    p.add_argument(
        "--treatments",
        help=f"comma-separated from {', '.join(TREATMENTS)} (default: all; fp32 eager is always added: the baseline)",
    )
    _output_argument(p, DeployConfig)


def add_cuda_check_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.benchmark.cuda_check import CudaCheckConfig

    d = _defaults(CudaCheckConfig)
    p.add_argument("--device", help=f"cuda or cpu (to try the command; default {d('device')})")
    p.add_argument("--models", type=names, help=f"models checked (default {d('models')})")
    _batch_size_argument(p, CudaCheckConfig, "batch of the correctness checks")
    p.add_argument("--img-size", type=int, help=f"input resolution (default {d('img_size')})")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="correctness only")
    p.add_argument(
        "--speed-args",
        metavar="FLAGS",
        help="flags of datvit bench for the speed part (--device and --output are added; default: bf16 "
        "and float32 training and inference at batch 128, torch.compile of dat_tiny and Swin-T)",
    )
    p.add_argument("--speed-timeout", type=float, help=f"seconds for the speed part (default {d('speed_timeout')})")
    _output_argument(p, CudaCheckConfig)


def add_export_all_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.export import FORMATS

    p.add_argument(
        "--models",
        nargs="+",
        type=names,
        action=ExtendNames,
        metavar="MODEL",
        help="variants to export, space- or comma-separated (default: every released variant)",
    )
    p.add_argument(
        "--formats",
        nargs="+",
        type=names,
        action=ExtendNames,
        metavar="FORMAT",
        help=f"from {', '.join(FORMATS)} (default: all)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def add_runtimes_arguments(p: argparse.ArgumentParser) -> None:
    from ..tools.benchmark.runtimes import RUNTIMES, RuntimesConfig

    d = _defaults(RuntimesConfig)
    p.add_argument("--models", type=names, help=f"models timed (default {d('models')})")
    p.add_argument("--baseline", help=f"the model the others are divided by (default {d('baseline')})")
    p.add_argument("--runtimes", type=names, help=f"from {', '.join(RUNTIMES)} (default {d('runtimes')})")
    p.add_argument("--batch-sizes", type=sizes, help=f"batch sizes (default {d('batch_sizes')})")
    p.add_argument("--img-size", type=int, help=f"input resolution (default {d('img_size')})")
    p.add_argument(
        "--sampling",
        type=names,
        help="DAT export graphs to time, from default, grid-sample, gather (datvit export --sampling; default "
        f"{d('sampling')})",
    )
    p.add_argument(
        "--sizes",
        type=names,
        help="DAT export graphs to time: dynamic (one graph for every H×W), static (--static-size) or both "
        f"(default {d('sizes')})",
    )
    p.add_argument("--rounds", type=int, help=f"interleaved timed rounds per batch size (default {d('rounds')})")
    p.add_argument(
        "--profile-rounds",
        type=int,
        help=f"ONNX Runtime profiler calls per graph, 0 for none (default {d('profile_rounds')})",
    )
    p.add_argument("--threads", type=int, help="threads of every runtime (default: the usable CPU count)")
    _output_argument(p, RuntimesConfig)


@dataclasses.dataclass(frozen=True)
class Tool:
    """A ``datvit bench <tool>``: its module under :mod:`datvit.tools.benchmark` (whose ``run(config)`` runs it,
    and whose docstring is its description), the name of its config class there, its flags and its one-line
    help."""

    module: str
    config: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str

    def load(self):
        import importlib

        return importlib.import_module(f"datvit.tools.benchmark.{self.module}")


TOOLS: dict[str, Tool] = {
    "profile": Tool(
        "profile",
        "ProfileConfig",
        add_profile_arguments,
        "torch.profiler tables of DAT models and the DeformableAttention module: by op, shape and block",
    ),
    "levers": Tool(
        "levers",
        "LeversConfig",
        add_levers_arguments,
        "A/B measurements of single speed levers, interleaved in one process",
    ),
    "deploy": Tool(
        "deploy",
        "DeployConfig",
        add_deploy_arguments,
        "bf16 / int8, eager / compiled against fp32: accuracy on a checkpoint and speed",
    ),
    "cuda-check": Tool(
        "cuda_check",
        "CudaCheckConfig",
        add_cuda_check_arguments,
        "the GPU checks in one command: fast vs reference path (logits, gradients), bf16, then the "
        "benchmark on the GPU",
    ),
    "runtimes": Tool(
        "runtimes",
        "RuntimesConfig",
        add_runtimes_arguments,
        "DAT and Swin-T in PyTorch eager, ONNX Runtime and OpenVINO (CPU, fp32), interleaved, with ORT's profile",
    ),
    "export-all": Tool(
        "export_all",
        "ExportAllConfig",
        add_export_all_arguments,
        "export every released variant to ONNX, torch.export and TorchScript, checked against eager",
    ),
}


def tool_config(name: str, args: argparse.Namespace) -> Any:
    """The parsed flags of ``datvit bench <name>`` as that tool's config."""
    tool = TOOLS[name]
    return config_from_args(getattr(tool.load(), tool.config), args)


def run_tool(
    name: str, bench: argparse.ArgumentParser, parser: argparse.ArgumentParser, args: argparse.Namespace
) -> int:
    """Run tool ``name``. A flag of the benchmark itself given before the tool's name is a usage error rather
    than silently ignored."""
    from ._errors import run_with_user_errors

    own = {a.dest for a in parser._actions}
    stray = [
        a.option_strings[0] for a in bench._actions if a.option_strings and a.dest in vars(args) and a.dest not in own
    ]
    if stray:
        bench.error(
            f"{', '.join(stray)}: a flag of the benchmark itself, not of 'datvit bench {name}' (give the "
            f"tool's flags after its name: datvit bench {name} --help)"
        )
    config = tool_config(name, args)
    return run_with_user_errors(f"bench {name}", lambda: TOOLS[name].load().run(config))


# -- registration ------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = run_parser(
        subparsers,
        "bench",
        help="benchmark DAT (fast and reference paths) against Swin-T and ConvNeXt-T; profiling and deployment tools",
        usage=USAGE,
        description="Inference and training throughput, peak memory, torch.compile and GFLOP/s of DAT / DAT++ "
        "(fast and reference paths) side by side with timm's Swin-T and ConvNeXt-T. Writes "
        "benchmark.json, benchmark.md and benchmark.png into --output. The tools below measure "
        "single aspects: datvit bench <tool> --help. See docs/benchmarks.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=lambda args: run(p, args))
    # the tools first, so that the help lists them before the benchmark's many flags
    tools = p.add_subparsers(title="tools", dest="tool", metavar="<tool>", required=False, prog=p.prog)
    for name, tool in TOOLS.items():
        t = run_parser(
            tools,
            name,
            help=tool.help,
            description=(tool.load().__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        tool.add_arguments(t)
        t.set_defaults(func=lambda args, name=name, t=t: run_tool(name, p, t, args))
    add_bench_arguments(p)
