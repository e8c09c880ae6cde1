"""scripts/mypy_baseline.py: the compare logic of the type-check ratchet in `make lint`."""

from pathlib import Path

import pytest

from tests._scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def mb():
    return load_script(ROOT / "scripts" / "mypy_baseline.py", "mypy_baseline")


OUTPUT = """\
src/medens/a.py:12: error: Incompatible types in assignment  [assignment]
src/medens/a.py:40:7: error: Incompatible types in assignment  [assignment]
src/medens/a.py:41: note: "list" is invariant
src/medens/b.py:3: error: Name "x" already defined on line 1  [no-redef]
Found 3 errors in 2 files (checked 10 source files)
"""


def test_normalise_drops_line_numbers_notes_and_the_summary(mb):
    assert mb.normalise(OUTPUT) == [
        "src/medens/a.py: error: Incompatible types in assignment  [assignment]",
        "src/medens/a.py: error: Incompatible types in assignment  [assignment]",
        'src/medens/b.py: error: Name "x" already defined on line N  [no-redef]',
    ]
    # the same errors after an edit moved them: nothing new
    moved = OUTPUT.replace(":12:", ":30:").replace(":40:7:", ":52:1:").replace("on line 1 ", "on line 9 ")
    assert mb.normalise(moved) == mb.normalise(OUTPUT)


def test_compare_counts_each_error(mb):
    base = mb.normalise(OUTPUT)
    a, b = base[0], base[2]
    assert mb.compare(base, base) == ([], [])
    # a third copy of an error the baseline lists twice is new
    assert mb.compare(base + [a], base) == ([a], [])
    c = "src/medens/c.py: error: Missing return statement  [return]"
    assert mb.compare([*base, c], base) == ([c], [])
    # a fixed error is reported, so the baseline can shrink
    assert mb.compare([a, b], base) == ([], [a])
    assert mb.compare([], base) == ([], sorted(base))


def test_the_baseline_file_round_trips(mb, tmp_path):
    errors = mb.normalise(OUTPUT)
    path = tmp_path / "baseline.txt"
    mb.write_baseline(path, list(reversed(errors)))
    assert path.read_text().startswith("# mypy errors in src")
    assert mb.read_baseline(path) == errors  # sorted, comments skipped, duplicates kept
    assert mb.read_baseline(tmp_path / "missing.txt") == []


@pytest.mark.parametrize("command", ["check", "update"])
def test_check_and_update_refuse_a_new_error(mb, tmp_path, monkeypatch, capsys, command):
    base = mb.normalise(OUTPUT)
    path = tmp_path / "baseline.txt"
    mb.write_baseline(path, base)
    new = "src/medens/c.py: error: Missing return statement  [return]"
    monkeypatch.setattr(mb, "run_mypy", lambda: [*base, new])
    assert mb.main([command, "--baseline", str(path)]) == 1
    assert new in capsys.readouterr().err
    assert mb.read_baseline(path) == base  # update did not grow the baseline
    assert mb.main(["update", "--accept-new", "--baseline", str(path)]) == 0
    assert mb.read_baseline(path) == sorted([*base, new])


def test_check_fails_on_a_stale_entry_and_update_shrinks(mb, tmp_path, monkeypatch, capsys):
    base = mb.normalise(OUTPUT)
    path = tmp_path / "baseline.txt"
    mb.write_baseline(path, base)
    monkeypatch.setattr(mb, "run_mypy", lambda: base[1:])
    assert mb.main(["check", "--baseline", str(path)]) == 1
    assert "no longer occur" in capsys.readouterr().err
    assert mb.main(["update", "--baseline", str(path)]) == 0
    assert mb.read_baseline(path) == base[1:]
    assert mb.main(["check", "--baseline", str(path)]) == 0
