"""Lint charts/medens and render it with the real Helm v4 engine (helm-python-sdk; no helm binary).

Usage: ``python scripts/chart.py [-f values.yaml] [--out DIR]``: prints the lint findings, fails
on an error, and writes the rendered manifests to ``DIR`` (default: stdout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import helm_python
import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "medens"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-f", "--values", help="a values file")
    ap.add_argument("--out", help="write the manifests here instead of stdout")
    ap.add_argument("--name", default="medens", help="release name")
    ap.add_argument("--namespace", default="default")
    args = ap.parse_args(argv)
    values = yaml.safe_load(Path(args.values).read_text()) if args.values else {}
    report = helm_python.lint(str(CHART), values)
    for m in report["messages"]:
        print(f"lint [{('unknown', 'INFO', 'WARNING', 'ERROR')[m['severity']]}] {m['path']}: {m['error']}",
              file=sys.stderr)
    if report["errors"] or any(m["severity"] >= 3 for m in report["messages"]):
        return 1
    chart = helm_python.Chart.load(str(CHART))
    try:
        rendered = chart.render(values, name=args.name, namespace=args.namespace)
    except helm_python.HelmError as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    finally:
        chart.close()
    notes = {p: t for p, t in rendered.items() if not p.endswith((".yaml", ".yml"))}
    rendered = {p: t for p, t in rendered.items() if p not in notes}
    for text in notes.values():  # NOTES.txt: what `helm install` prints, not a manifest
        print(text.strip(), file=sys.stderr)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for path, text in rendered.items():
            if text.strip():
                (out / Path(path).name).write_text(text)
        print(f"rendered {sum(1 for t in rendered.values() if t.strip())} manifests into {out}", file=sys.stderr)
    else:
        print("\n---\n".join(t.strip() for t in rendered.values() if t.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
