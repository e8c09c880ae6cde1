"""The design docs live in the repository and cannot drift silently from the code.

- No file cites a design document outside the repository (the former workspace-only design and
  methods notes, by their bare names).
- Every ``docs/<file>.md section N[.M]`` cited in code, tests, charts or the README names a file
  in docs/ and a numbered heading that exists in it (docs/architecture.md section 1 explains the
  format); so do the cross-references between the docs.
- Every loss and ensemble method in medens' registries is named in docs/methods.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "components", "pipelines", "tests", "benchmarks", "charts", "scripts")
TOP_FILES = ("README.md", "Makefile", "pyproject.toml", "Dockerfile")
SUFFIXES = {".py", ".yaml", ".yml", ".tpl", ".txt", ".md", ".sh", ".toml", ".json", ""}

# built from pieces so that this file does not match itself
_NAMES = "(?:" + "DESIGN" + "|" + "METHODS" + ")"
OUTSIDE = re.compile(r"\b" + _NAMES + r"(?:\.md\b|\s+section\b)|\(" + _NAMES + ":")
# "docs/methods.md section 5.1", also wrapped over lines of a docstring or a comment
CITATION = re.compile(r"docs/([\w-]+)\.md,?(?:\s|#)+sections?(?:\s|#)+(\d+(?:\.\d+)*)")
# inside docs/: "methods.md section 8.2" (a bare "section N" refers to the same file)
CROSS_REF = re.compile(r"\b([\w-]+)\.md,?\s+sections?\s+(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


def _files() -> list[Path]:
    out = [ROOT / name for name in TOP_FILES if (ROOT / name).is_file()]
    for top in SCANNED:
        base = ROOT / top
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts and p.name != "test_docs.py":
                out.append(p)
    return out


def _sections(doc: Path) -> set[str]:
    return set(HEADING.findall(doc.read_text(encoding="utf-8")))


def _citations(pattern: re.Pattern, files: list[Path]) -> list[tuple[Path, int, str, str]]:
    found = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in pattern.finditer(text):
            found.append((p, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)))
    return found


def test_no_citation_of_documents_outside_the_repository():
    hits = []
    for p in _files():
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        hits += [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if OUTSIDE.search(line)]
    assert not hits, "cite docs/architecture.md or docs/methods.md instead:\n" + "\n".join(hits)


def test_docs_have_numbered_sections():
    for name in ("architecture", "methods"):
        sections = _sections(DOCS / f"{name}.md")
        assert {"1", "2", "3"} <= sections, f"docs/{name}.md: numbered headings missing ({sorted(sections)})"


def test_every_cited_section_exists():
    citations = _citations(CITATION, _files())
    # the code cites the docs in many places: a regex that matched nothing would pass vacuously
    in_src = [c for c in citations if c[0].is_relative_to(ROOT / "src")]
    assert len(in_src) >= 30, f"only {len(in_src)} citations of docs/ found in src"
    missing = []
    for path, line, doc, section in citations:
        target = DOCS / f"{doc}.md"
        where = f"{path.relative_to(ROOT)}:{line}: docs/{doc}.md section {section}"
        if not target.is_file():
            missing.append(f"{where}: no such file")
        elif section not in _sections(target):
            missing.append(f"{where}: no such heading")
    assert not missing, "\n".join(missing)


def test_cross_references_between_docs_exist():
    docs = sorted(DOCS.glob("*.md"))
    missing = []
    for path, line, doc, section in _citations(CROSS_REF, docs):
        target = DOCS / f"{doc}.md"
        if not target.is_file() or section not in _sections(target):
            missing.append(f"{path.relative_to(ROOT)}:{line}: {doc}.md section {section}")
    assert not missing, "\n".join(missing)


def _registered() -> dict[str, list[str]]:
    from medens.ensemble import ENSEMBLES, SEG_ENSEMBLES
    from medens.losses import LOSSES, SEG_LOSSES

    return {registry.kind: registry.names() for registry in (LOSSES, SEG_LOSSES, ENSEMBLES, SEG_ENSEMBLES)}


@pytest.mark.parametrize("kind", ["loss", "segmentation loss", "ensemble", "segmentation ensemble"])
def test_every_registered_method_is_in_methods_md(kind):
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    names = _registered()[kind]
    assert names, f"registry {kind!r} is empty"
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"docs/methods.md does not name these entries of the {kind} registry: {missing}"


def test_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme and "(docs/methods.md)" in readme
