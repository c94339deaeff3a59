"""Every subcommand's flags, walked from the one ``datvit`` parser: the same concept has the same flag in every
command, and whatever a command writes goes to ``--output``."""

from __future__ import annotations

import argparse
from collections import defaultdict

import pytest

from datvit.cli.main import build_parser

# concept (argparse dest) → the flag every command uses for it
CANONICAL = {
    "checkpoint": "--checkpoint",
    "model": "--model",
    "img_size": "--img-size",
    "batch_size": "--batch-size",
    "device": "--device",
    "output": "--output",
    "data_dir": "--data-dir",
    "num_classes": "--num-classes",
    "use_ema": "--use-ema",
    "workers": "--workers",
    "amp": "--amp",
    "trust_checkpoint": "--trust-checkpoint",
    "crop_size": "--crop-size",
    "eval_mode": "--eval-mode",
    "eval_stride": "--eval-stride",
    "seed": "--seed",
    "epochs": "--epochs",
    "no_progress": "--no-progress",
    "in_chans": "--in-chans",
}
# the same flag in a command where it means something else would mislead: --iters counts optimizer updates
# (train), a benchmark's timed calls are --bench-iters
MEANINGS = {"--iters": "optimizer updates to train"}
# names of earlier versions, accepted as aliases but never a flag's own name
RETIRED = {"--out", "--results-file", "--fashion-mnist-dir", "--crop", "--stride"}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every parser below ``parser``."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            longs = [s for s in action.option_strings if s.startswith("--")]
            yield action, longs[0] if longs else action.option_strings[0]


PARSERS = [(" ".join(path), p) for path, p in walk(build_parser()) if path]


def test_every_command_is_walked():
    names = {name for name, _ in PARSERS}
    assert {
        "train",
        "eval",
        "predict",
        "convert",
        "visualize",
        "export",
        "bench",
        "flops",
        "demo",
        "demo-dense",
        "det train",
        "det eval",
        "det predict",
        "seg train",
        "seg eval",
        "seg predict",
        "bench profile",
        "bench levers",
        "bench deploy",
        "bench cuda-check",
        "bench export-all",
    } <= names


@pytest.mark.parametrize("name,parser", PARSERS, ids=[n for n, _ in PARSERS])
def test_one_flag_per_concept(name, parser):
    for action, flag in options(parser):
        assert flag not in RETIRED, f"datvit {name}: {flag} is a retired name ({action.option_strings})"
        if action.dest in CANONICAL:
            assert flag == CANONICAL[action.dest], (
                f"datvit {name}: {action.dest} is {flag}, not {CANONICAL[action.dest]}"
            )
        for canonical_dest, canonical in CANONICAL.items():
            if canonical in action.option_strings:
                assert action.dest == canonical_dest, f"datvit {name}: {canonical} sets {action.dest}"


def test_a_flag_means_one_thing_in_every_command():
    seen: dict[str, set[str]] = defaultdict(set)
    for name, parser in PARSERS:
        for action, flag in options(parser):
            seen[flag].add(action.dest)
            if flag in MEANINGS:
                assert MEANINGS[flag] in (action.help or ""), f"datvit {name}: {flag} means {action.help!r}"
    assert {flag: dests for flag, dests in seen.items() if len(dests) > 1} == {}


def test_what_a_command_writes_goes_to_output():
    writers = {
        "train",
        "eval",
        "predict",
        "convert",
        "visualize",
        "export",
        "bench",
        "demo",
        "demo-dense",
        "det train",
        "det eval",
        "det predict",
        "seg train",
        "seg eval",
        "seg predict",
        "bench profile",
        "bench deploy",
        "bench cuda-check",
    }
    for name, parser in PARSERS:
        if name in writers:
            flags = {flag for _, flag in options(parser)}
            assert "--output" in flags, f"datvit {name} writes files but has no --output"
            assert not flags & {"--out", "--out-dir", "--output-dir", "--results-file"}


def test_retired_names_still_parse():
    parser = build_parser()
    assert parser.parse_args(["visualize", "--checkpoint", "c", "--image", "i", "--out", "x.png"]).output == "x.png"
    assert parser.parse_args(["eval", "--checkpoint", "c", "--results-file", "r.json"]).output == "r.json"
    args = parser.parse_args(["seg", "eval", "--checkpoint", "c", "--mode", "slide", "--crop", "64", "--stride", "32"])
    assert (args.eval_mode, args.crop_size, args.eval_stride) == ("slide", 64, 32)
    assert parser.parse_args(["demo-dense", "--fashion-mnist-dir", "d"]).data_dir == "d"
    args = parser.parse_args(["convert", "--checkpoint", "a.pth", "--output", "hub"])
    assert (args.checkpoint, args.output) == ("a.pth", "hub")


def test_every_help_renders():
    # argparse %-formats each option's and command's help: a bare "95% intervals" fails only on --help
    for path, parser in walk(build_parser()):
        assert parser.format_help(), path
