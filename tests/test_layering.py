"""The layering the README draws, checked on every import statement of the package (lazy ones inside functions
too): layers → models → inference → train / tools / dense → experiments → cli; nothing imports a layer to its
right. ``utils``, ``configs`` and ``runtime`` serve every layer; ``data`` sits beside ``models``, ``deploy`` beside
``inference``; within the train/tools/dense layer only ``dense`` may use the other two (the engine's task protocol,
FLOP counting), never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "datvit"
RANK = {
    "utils": 0,
    "configs": 0,
    "runtime": 0,
    "layers": 1,
    "models": 2,
    "data": 2,
    "inference": 3,
    "deploy": 3,
    "train": 4,
    "tools": 4,
    "dense": 4,
    "experiments": 5,
    "cli": 6,
}
SAME_RANK_ALLOWED = {("dense", "train"), ("dense", "tools")}
FACADES = {"__init__", "__main__", "__version__"}  # the package's top-level modules re-export and start the CLI


def _package(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _targets(path: Path):
    """(line, top-level datvit package) of every datvit import in ``path``."""
    module_parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if module_parts[-1] == "__init__":
        module_parts = module_parts[:-1]
        here = module_parts
    else:
        here = module_parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                names = base + (node.module.split(".") if node.module else [])
                if not names:  # `from .. import x` at the package's top: x is the package
                    yield from ((node.lineno, alias.name) for alias in node.names)
                    continue
                yield node.lineno, names[0]
            elif node.module and node.module.split(".")[0] == "datvit" and "." in node.module:
                yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("datvit."):
                    yield node.lineno, alias.name.split(".")[1]


def _violations():
    for path in sorted(ROOT.rglob("*.py")):
        src = _package(path)
        if src in FACADES:
            continue
        for line, target in _targets(path):
            target = target.removesuffix(".py")
            if target == src or target in FACADES:
                continue
            assert src in RANK and target in RANK, f"{path}:{line}: package {src!r} or {target!r} has no layer here"
            if RANK[target] > RANK[src] or (RANK[target] == RANK[src] and (src, target) not in SAME_RANK_ALLOWED):
                yield f"{path.relative_to(ROOT.parent)}:{line}: {src} imports {target}"


def test_no_package_imports_a_layer_to_its_right():
    bad = list(_violations())
    assert not bad, "imports against the README's layering:\n" + "\n".join(bad)


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py")} - FACADES
    assert packages | modules <= set(RANK), sorted((packages | modules) - set(RANK))


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from ..tools.flops import count_flops\n", "tools"),
        ("from .. import train\n", "train"),
        ("import datvit.cli.main\n", "cli"),
    ],
)
def test_the_checker_sees_relative_lazy_and_absolute_imports(tmp_path, monkeypatch, source, expected):
    pkg = tmp_path / "datvit" / "models"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(f"def f():\n    {source.strip()}\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "datvit")
    assert [t for _, t in _targets(pkg / "x.py")] == [expected]
    assert any("models imports" in v for v in _violations())
