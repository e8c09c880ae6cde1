"""Fail unless every installed distribution is in the lock at its locked version.

Usage: ``python scripts/check_lock.py requirements.lock`` (the Dockerfile runs it after installing;
the image holds a subset of the lock: no dev or bench extras). A local version label (torch's
``+cpu``) is ignored, as pip's ``==`` constraint ignores it.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def problems(lock: dict[str, str], installed: dict[str, str], own: str = "medens") -> list[str]:
    out = []
    for name, version in sorted(installed.items()):
        if name == own:
            continue
        if name not in lock:
            out.append(f"{name}=={version} is installed but not in the lock")
        elif version.split("+")[0] != lock[name].split("+")[0]:
            out.append(f"{name}=={version} is installed; the lock has {lock[name]}")
    return out


def main(argv: list[str]) -> int:
    lock = read_lock(Path(argv[0] if argv else "requirements.lock"))
    installed = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    found = problems(lock, installed)
    for p in found:
        print(p, file=sys.stderr)
    print(f"{len(installed)} installed distributions checked against {len(lock)} locked: "
          f"{'OK' if not found else f'{len(found)} problem(s)'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
