"""The import graph, read from the source (ast): no module imports a layer above its own.

Layers, bottom to top:
  0  leaf modules: seeds, io, device, jobs, releases, config, checks, checkpoint, results, plotting
  1  the library packages: data, encoders, diffusion, privacy, evaluation, export
  2  pipeline (the cache; knows no stage), schedule (computes many stages at once)
  3  stages (stage functions and their loaders)
  4  analysis (tables for the notebooks), summary, reproduce, release_cli, notebook, cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "trichotomy_lib"

LAYERS = {
    "seeds": 0, "io": 0, "device": 0, "releases": 0, "config": 0, "checks": 0, "checkpoint": 0, "results": 0,
    "plotting": 0, "jobs": 0,
    "data": 1, "encoders": 1, "diffusion": 1, "privacy": 1, "evaluation": 1, "export": 1,
    "pipeline": 2, "schedule": 2,
    "stages": 3,
    "analysis": 4, "summary": 4, "reproduce": 4, "notebook": 4, "cli": 4, "release_cli": 4,
}
LIBRARY = ("data", "encoders", "diffusion", "privacy", "evaluation", "export")


def _top(module: str) -> str:
    """``trichotomy_lib.privacy.pso`` → ``privacy``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every trichotomy_lib module ``path`` imports (absolute names), with the line — also the
    imports inside functions, which hide the dependency graph but are still dependencies."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts if rel.name != "__init__" else rel.parts[:-1])
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
                names += [f"{node.module}.{a.name}" for a in node.names]
            found += [(n, node.lineno) for n in names if n.startswith("trichotomy_lib")]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("trichotomy_lib")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    tops = {_top(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in MODULES} - {"", "__init__"}
    assert tops <= set(LAYERS), f"modules without a layer: {sorted(tops - set(LAYERS))}; add them to LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_import(path):
    own = _top(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    if own in ("", "__init__"):
        return
    upward = [(name, line) for name, line in _imports(path)
              if _top(name) in LAYERS and LAYERS[_top(name)] > LAYERS[own]]
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {LAYERS[own]}) imports a higher layer: {upward}"


def test_the_checker_sees_upward_imports(tmp_path, monkeypatch):
    """The test above can fail: a library module that imports a stage is caught, relative or not."""
    fake = PACKAGE / "privacy" / "_layering_probe.py"
    source = "from ..stages.generate import load_release\n\ndef f():\n    import trichotomy_lib.pipeline\n"
    try:
        fake.write_text(source)
        names = {n for n, _ in _imports(fake)}
        assert "trichotomy_lib.stages.generate" in names and "trichotomy_lib.pipeline" in names
        with pytest.raises(AssertionError, match="imports a higher layer"):
            test_no_upward_import(fake)
    finally:
        fake.unlink()


def test_library_packages_never_import_stages_or_the_pipeline():
    for path in MODULES:
        own = _top(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if own in LIBRARY:
            bad = [n for n, _ in _imports(path) if _top(n) in ("stages", "pipeline", "analysis")]
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"
