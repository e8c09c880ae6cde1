"""mypy on ``src`` against a baseline of known errors, which may only shrink.

Usage::

    python scripts/mypy_baseline.py check    # `make lint`: fail on an error not in the baseline,
                                              # and on a baseline entry that no longer occurs
    python scripts/mypy_baseline.py update   # rewrite the baseline after fixing errors (refuses
                                              # to add errors)
    python scripts/mypy_baseline.py update --accept-new   # regenerate it whole (after a merge)

The baseline (``mypy-baseline.txt``) holds one line per error, ``path: error: message  [code]``,
sorted, without line numbers, so that an edit above an old error does not make it new; the
same error twice in a file is listed twice. mypy reads its settings from pyproject.toml
(``[tool.mypy]``: which files, which libraries are not followed).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mypy-baseline.txt"
HEADER = ("# mypy errors in src that are known and tolerated (scripts/mypy_baseline.py); it may only shrink.\n"
          "# Regenerate with: python scripts/mypy_baseline.py update\n")
ERROR = re.compile(r"^(?P<path>[^:\s][^:]*):(?P<line>\d+)(?::\d+)?: error: (?P<message>.*)$")


def normalise(output: str) -> list[str]:
    """mypy's error lines without line or column numbers (notes and summaries are dropped), sorted."""
    out = []
    for raw in output.splitlines():
        m = ERROR.match(raw.strip())
        if m:
            path = m["path"].replace("\\", "/")
            message = re.sub(r"\bon line \d+\b", "on line N", m["message"].rstrip())
            out.append(f"{path}: error: {message}")
    return sorted(out)


def compare(current: list[str], baseline: list[str]) -> tuple[list[str], list[str]]:
    """``(new, fixed)``: errors beyond the baseline's count of each, and baseline entries no longer seen."""
    now, known = Counter(current), Counter(baseline)
    return sorted((now - known).elements()), sorted((known - now).elements())


def read_baseline(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def write_baseline(path: Path, errors: list[str]) -> None:
    path.write_text(HEADER + "".join(f"{e}\n" for e in sorted(errors)))


def run_mypy() -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--hide-error-context",
                           "--no-color-output"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and "error:" not in proc.stdout):
        raise SystemExit(f"mypy did not run (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return normalise(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "update"])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--accept-new", action="store_true", help="update: take every current error as the baseline")
    args = parser.parse_args(argv)
    current = run_mypy()
    new, fixed = compare(current, read_baseline(args.baseline))
    if args.command == "update":
        if new and not args.accept_new:
            print("\n".join(new), file=sys.stderr)
            print(f"{len(new)} error(s) not in {args.baseline.name}: fix them (the baseline may only shrink), or "
                  "regenerate it with --accept-new", file=sys.stderr)
            return 1
        write_baseline(args.baseline, current)
        print(f"{args.baseline.name}: {len(current)} error(s) ({len(fixed)} fixed, {len(new)} added)")
        return 0
    if new:
        print("\n".join(new), file=sys.stderr)
        print(f"mypy: {len(new)} error(s) not in {args.baseline.name} (run mypy for their line numbers)",
              file=sys.stderr)
    if fixed:
        print("\n".join(fixed), file=sys.stderr)
        print(f"mypy: {len(fixed)} baseline error(s) no longer occur: shrink the baseline with "
              "`python scripts/mypy_baseline.py update`", file=sys.stderr)
    if new or fixed:
        return 1
    print(f"mypy: no errors beyond the {len(current)} in {args.baseline.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
