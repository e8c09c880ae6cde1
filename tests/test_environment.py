"""The reproducible environment: what is installed is the lock, and the lock agrees with pyproject.toml.

``requirements.lock`` (written by ``make lock``) pins every package the ``.venv`` bootstrap
installs; the Makefile installs with it as pip constraints. pyproject.toml keeps compatible
ranges for people who install medens as a library. These tests fail when the two drift apart.
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
# installed into the venv by the bootstrap itself (pip, and setuptools to build medens without
# build isolation), not required by any declared dependency
BOOTSTRAP = {"pip", "setuptools"}


def read_lock(text: str) -> dict[str, str]:
    """``canonical name -> version`` of a lock file; every line must be ``name==version``."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version or any(c in version for c in "<>=!~,; @"):
            raise ValueError(f"lock line {n} is not 'name==version': {raw!r}")
        key = canonicalize_name(name)
        if key in out:
            raise ValueError(f"lock line {n}: {name} is locked twice")
        out[key] = version.strip()
    return out


def declared(pyproject: dict, extras: Iterable[str] = ("dev", "bench")) -> list[Requirement]:
    """The requirements pyproject.toml declares: ``dependencies`` plus the named extras."""
    project = pyproject["project"]
    reqs = list(project.get("dependencies", []))
    for e in extras:
        reqs += project.get("optional-dependencies", {}).get(e, [])
    return [Requirement(r) for r in reqs]


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def installed_requires(name: str) -> list[Requirement]:
    """The requirements in the installed distribution's metadata."""
    return [Requirement(r) for r in (md.distribution(name).requires or [])]


def lock_problems(reqs: list[Requirement], lock: dict[str, str],
                  requires_of: Callable[[str], list[Requirement]] = installed_requires) -> list[str]:
    """Every disagreement between the declared requirements and the lock, as sentences.

    - a declared package that is not locked, or locked at a version outside its declared range;
    - a package that the declared ones need (transitively, extras and markers evaluated) that is
      not locked;
    - a locked package that nothing declared needs (besides the bootstrap's pip and setuptools).
    """
    problems = []
    for r in reqs:
        key = canonicalize_name(r.name)
        if not _applies(r, set()):
            continue
        if key not in lock:
            problems.append(f"{r.name} is declared in pyproject.toml ({r}) but not in the lock")
        elif not r.specifier.contains(Version(lock[key]), prereleases=True):
            problems.append(f"{r.name}=={lock[key]} in the lock is outside pyproject.toml's range {r.specifier}")
    needed: dict[str, set[str]] = {}
    todo = [(r, set()) for r in reqs]
    while todo:
        req, parent_extras = todo.pop()
        if not _applies(req, parent_extras):
            continue
        key = canonicalize_name(req.name)
        extras = {canonicalize_name(e) for e in req.extras}
        if key in needed and extras <= needed[key]:
            continue
        needed.setdefault(key, set()).update(extras)
        if key not in lock:
            continue  # reported above (declared) or below (transitive)
        todo += [(sub, extras) for sub in requires_of(key)]
    declared_keys = {canonicalize_name(r.name) for r in reqs}
    for key in sorted(set(needed) - set(lock) - declared_keys):
        problems.append(f"{key} is needed by a declared dependency but not in the lock")
    for key in sorted(set(lock) - set(needed) - BOOTSTRAP):
        problems.append(f"{key}=={lock[key]} is locked but nothing in pyproject.toml needs it")
    return problems


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return read_lock(LOCK.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_installed_set_equals_the_lock(lock):
    """Run `make venv` (or `make clean test`) if this fails: the .venv is not what was locked."""
    assert len(lock) > 100 and {"torch", "monai", "kfp", "kserve", "numpy", "pytest"} <= set(lock)
    wrong = {}
    for name, version in lock.items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have != version:
            wrong[name] = (version, have)
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


def test_pyproject_and_lock_agree(pyproject, lock):
    """Run `make lock` after changing pyproject.toml's dependencies."""
    assert lock_problems(declared(pyproject), lock) == []


def test_torch_is_locked_at_the_version_on_this_disk(lock):
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"


# ---------------------------------------------------------------- the check fails when it should

def _fake(graph: dict[str, list[str]]) -> Callable[[str], list[Requirement]]:
    return lambda name: [Requirement(r) for r in graph.get(name, [])]


GRAPH = {"app": ["lib>=1", 'extra-only; extra == "fast"'], "lib": ["dep"], "dep": [], "tool": []}


def test_check_passes_on_an_agreeing_pair():
    reqs = [Requirement("app>=2,<3"), Requirement("tool==1.0")]
    lock = {"app": "2.5", "lib": "1.2", "dep": "0.1", "tool": "1.0", "pip": "26.3"}
    assert lock_problems(reqs, lock, _fake(GRAPH)) == []


@pytest.mark.parametrize(("reqs", "lock", "expected"), [
    (["app>=2,<3", "tool==1.0"], {"app": "2.5", "lib": "1.2", "dep": "0.1"},
     ["tool is declared in pyproject.toml (tool==1.0) but not in the lock"]),
    (["app>=2,<3"], {"app": "3.0", "lib": "1.2", "dep": "0.1"},
     ["app==3.0 in the lock is outside pyproject.toml's range <3,>=2"]),
    (["app>=2,<3"], {"app": "2.5", "lib": "1.2"}, ["dep is needed by a declared dependency but not in the lock"]),
    (["app>=2,<3"], {"app": "2.5", "lib": "1.2", "dep": "0.1", "stray": "9"},
     ["stray==9 is locked but nothing in pyproject.toml needs it"]),
    (["app[fast]>=2,<3"], {"app": "2.5", "lib": "1.2", "dep": "0.1"},
     ["extra-only is needed by a declared dependency but not in the lock"]),
])
def test_check_names_each_disagreement(reqs, lock, expected):
    assert lock_problems([Requirement(r) for r in reqs], lock, _fake(GRAPH)) == expected


def test_a_new_declared_dependency_without_a_lock_refresh_fails(pyproject, lock):
    data = {"project": {**pyproject["project"],
                        "dependencies": [*pyproject["project"]["dependencies"], "zarr>=2"]}}
    assert lock_problems(declared(data), lock) == ["zarr is declared in pyproject.toml (zarr>=2) but not in the lock"]


def test_read_lock_refuses_ranges_and_duplicates():
    assert read_lock("# c\nNumPy==2.4.6  # pinned\n\nfoo_bar==1\n") == {"numpy": "2.4.6", "foo-bar": "1"}
    with pytest.raises(ValueError, match="line 1 is not 'name==version'"):
        read_lock("numpy>=2\n")
    with pytest.raises(ValueError, match="NumPy is locked twice"):
        read_lock("numpy==2\nNumPy==2\n")
