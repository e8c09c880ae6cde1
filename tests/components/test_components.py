"""The Kubeflow components: thin, typed, one image from MEDENS_IMAGE, medens imported inside the body."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import components
from components._image import DEFAULT_IMAGE, image_from_env

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["fingerprint", "preprocess", "train", "predict", "ensemble", "evaluate", "report", "register", "deploy", "gate"]


def test_one_file_per_stage():
    files = {p.stem for p in (ROOT / "components").glob("*.py") if not p.stem.startswith("_")}
    assert set(STAGES) <= files
    assert {c.name for c in components.ALL} == {*STAGES, "evaluate-segmentation"}


def test_default_image_is_the_package_version(monkeypatch):
    import tomllib

    # the version pyproject.toml releases, read from the file, not from medens
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert DEFAULT_IMAGE == f"medens:{version}"
    monkeypatch.delenv("MEDENS_IMAGE", raising=False)
    assert image_from_env() == f"medens:{version}"
    monkeypatch.setenv("MEDENS_IMAGE", " registry.example:5000/medens:ci-7 \n")
    assert image_from_env() == "registry.example:5000/medens:ci-7"  # stripped
    monkeypatch.setenv("MEDENS_IMAGE", "   ")
    assert image_from_env() == f"medens:{version}"  # blank counts as unset


@pytest.mark.parametrize("comp", components.ALL, ids=lambda c: c.name)
def test_every_component_uses_the_image_and_installs_nothing(comp):
    container = comp.component_spec.implementation.container
    assert container.image == components.IMAGE
    script = " ".join([*container.command, *(container.args or [])])
    assert "pip install" not in script  # install_kfp_package=False: the image already holds kfp and medens
    assert "kfp.dsl.executor_main" in script


@pytest.mark.parametrize("stage", STAGES)
def test_medens_is_imported_inside_component_bodies_only(stage):
    path = ROOT / "components" / f"{stage}.py"
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert all(n.split(".")[0] in ("kfp", "typing", "components") for n in names), (path.name, names)
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        inner = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("medens")]
        assert inner, f"{path.name}:{fn.name} does not call medens"


def _types(comp, side):
    specs = getattr(comp.component_spec, side) or {}
    return {name: (s.type, getattr(s, "is_artifact_list", False)) for name, s in specs.items()}


def test_typed_artifacts():
    c = components
    assert _types(c.preprocess, "outputs") == {"dataset": ("system.Dataset@0.0.1", False), "Output": ("List", False)}
    assert _types(c.train, "inputs")["dataset"] == ("system.Dataset@0.0.1", False)
    assert _types(c.train, "outputs") == {"model": ("system.Model@0.0.1", False)}
    assert _types(c.ensemble, "inputs")["members"] == ("system.Model@0.0.1", True)  # dsl.Collected list
    assert _types(c.ensemble, "outputs") == {"ensembles": ("system.Model@0.0.1", False)}
    ev = _types(c.evaluate, "outputs")
    assert ev["metrics"][0] == "system.Metrics@0.0.1"
    assert ev["classification_metrics"][0] == "system.ClassificationMetrics@0.0.1"
    assert ev["best"][0] == "system.Model@0.0.1" and ev["evaluation"][0] == "system.Artifact@0.0.1"
    assert "classification_metrics" not in _types(c.evaluate_segmentation, "outputs")
    assert _types(c.report, "outputs") == {"html": ("system.HTML@0.0.1", False),
                                           "markdown": ("system.Markdown@0.0.1", False)}
    assert _types(c.predict, "outputs") == {"predictions": ("system.Dataset@0.0.1", False)}
    assert _types(c.gate, "outputs") == {"decision": ("system.Metrics@0.0.1", False), "Output": ("Boolean", False)}
    assert _types(c.register, "outputs") == {"uri": ("String", False), "name": ("String", False),
                                             "version": ("String", False)}
    assert _types(c.deploy, "outputs") == {"Output": ("String", False)}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
    return out


def test_kfp_only_in_components_and_pipelines_and_kserve_only_in_serving():
    src = ROOT / "src" / "medens"
    for path in src.rglob("*.py"):
        used = _imports(path)
        assert "kfp" not in used, f"{path} imports kfp"
        if "kserve" in used:
            assert path.relative_to(src).parts[0] == "serving", f"{path} imports kserve outside medens/serving"


def test_image_from_the_environment_at_import(tmp_path):
    code = "import components; print(components.IMAGE); print(components.train.component_spec.implementation.container.image)"
    env = {**os.environ, "MEDENS_IMAGE": "registry.example/medens:test", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         check=True).stdout.split()
    assert out == ["registry.example/medens:test"] * 2
