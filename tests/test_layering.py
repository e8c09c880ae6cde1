"""The import rules of docs/architecture.md section 2.2 hold, and the contracts that state them catch breaches.

The contracts are pyproject.toml's ``[tool.importlinter]``; ``lint-imports`` (import-linter) checks
them, as ``make lint`` does. A breach is planted in a copy of the package, never in the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
OUTER = "pipelines -> components -> medens, never back"
LAYERS = "medens layers: each layer imports only the layers below it"
NO_KFP = "kfp only in components/ and pipelines/, never in medens"
KSERVE = "kserve and the kubernetes client only in medens.serving"
ACYCLIC = "no import cycles between sibling modules in medens"
CONTRACTS = (OUTER, LAYERS, NO_KFP, KSERVE, ACYCLIC)


def lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package ``medens`` found under ``src``, with the contracts of ``config``."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}  # wide: no contract name wraps
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT / "src", ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in result.stdout, result.stdout
    assert "0 broken" in result.stdout


CYCLES = """
import grimp
graph = grimp.build_graph("medens", cache_dir=None)
for module in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(module)):
        back = graph.find_shortest_chain(importer=imported, imported=module)
        if back:
            print(" -> ".join((module, *back)))
"""


def import_cycles(src: Path) -> list[str]:
    """Every import cycle through the package ``medens`` found under ``src``, one per import in it."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, "-c", CYCLES], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.splitlines()


def test_no_import_cycle_anywhere_in_medens():
    """Not only between siblings (the acyclic contract): no module reaches itself through its
    imports, a package and its own submodules included, at module level or inside functions."""
    assert import_cycles(ROOT / "src") == []


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A pristine copy of ``src/medens`` (``<copy>/src/medens``) and the contracts (``<copy>/pyproject.toml``)."""
    copy = tmp_path_factory.mktemp("layering")
    shutil.copytree(ROOT / "src" / "medens", copy / "src" / "medens",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


BREACHES = {
    # name: ({path under medens: source}, the contracts it breaks, a line of lint-imports' report)
    "lower-layer-imports-higher": (
        # a lazy import inside a function breaks the layers as surely as a module-level one (and
        # closes a cycle data -> training -> data)
        {"data/_breach.py": "def f():\n    import medens.training\n"},
        {LAYERS, ACYCLIC}, "medens.data is not allowed to import medens.training",
    ),
    "module-without-a-layer": ({"extra.py": ""}, {LAYERS}, "- medens.extra"),
    "medens-imports-components": (
        # (and reaches kfp and the higher layers through components: indirect imports count too)
        {"data/_breach.py": "import components\n"}, {OUTER, LAYERS, NO_KFP},
        "medens is not allowed to import components",
    ),
    "kfp-in-medens": ({"evaluation/_breach.py": "import kfp\n"}, {NO_KFP}, "medens.evaluation._breach -> kfp"),
    "kserve-outside-serving": (
        {"training/_breach.py": "from kserve import Model\n"}, {KSERVE}, "medens.training._breach -> kserve",
    ),
    "kubernetes-outside-serving": (
        {"data/_breach.py": "import kubernetes\n"}, {KSERVE}, "medens.data._breach -> kubernetes",
    ),
    "sibling-cycle": (
        {"data/_breach_a.py": "import medens.data._breach_b\n",
         "data/_breach_b.py": "def f():\n    import medens.data._breach_a\n"},
        {ACYCLIC}, "No cycles are allowed in medens.data",
    ),
}


@pytest.mark.parametrize("breach", sorted(BREACHES))
def test_a_breach_breaks_its_contract(package_copy, breach):
    files, broken, detail = BREACHES[breach]
    planted = [package_copy / "src" / "medens" / relpath for relpath in files]
    for path, source in zip(planted, files.values()):
        path.write_text(source)
    try:
        result = lint_imports(package_copy / "src", package_copy / "pyproject.toml")
    finally:
        for path in planted:
            path.unlink()
    assert result.returncode == 1, result.stdout + result.stderr
    for name in CONTRACTS:
        assert f"{name} {'BROKEN' if name in broken else 'KEPT'}" in result.stdout, result.stdout
    assert detail in result.stdout, result.stdout


def test_a_lazy_import_of_the_own_package_is_a_cycle(package_copy):
    fusion = package_copy / "src" / "medens" / "models" / "fusion.py"
    original = fusion.read_text()
    fusion.write_text(original + "\n\ndef _late():\n    from medens.models import build\n\n    return build\n")
    try:
        cycles = import_cycles(package_copy / "src")
    finally:
        fusion.write_text(original)
    assert "medens.models.fusion -> medens.models -> medens.models.fusion" in cycles
