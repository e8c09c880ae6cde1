"""``python -m medens.losses list [--task T] [--format text|markdown]`` or ``... docs PATH``."""

from __future__ import annotations

import argparse

from medens.losses import TASKS, format_table, write_docs


def main(argv: list[str] | None = None) -> int:
    """Print the loss table or write docs/losses.md."""
    parser = argparse.ArgumentParser(prog="python -m medens.losses", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    list_cmd = sub.add_parser("list", help="print the loss table")
    list_cmd.add_argument("--task", choices=TASKS, default=None)
    list_cmd.add_argument("--format", choices=("text", "markdown"), default="text")
    docs_cmd = sub.add_parser("docs", help="write the Markdown loss table")
    docs_cmd.add_argument("path", nargs="?", default="docs/losses.md")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(format_table(args.task, args.format), end="")
    else:
        print(write_docs(args.path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
