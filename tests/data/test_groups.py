"""Patient-level splits (data.group_by): group-disjoint splits, the leakage check, clear errors."""

import numpy as np
import pytest
from PIL import Image

from medens.config import parse_spec
from medens.data import build_dataset
from medens.data.groups import group_split, groups_from_pattern, leakage_problem, shared_groups


def write_png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12), value, np.uint8)).save(path)


def spec(source, path, **data):
    return parse_spec({"name": "t", "task": "classification", "models": ["m"], "losses": ["l"],
                       "data": {"source": source, "path": str(path), "image_size": 12, "channels": 1, **data}})


def kermany_style_folder(root, n_persons=40, seed=0):
    """Class folders whose files are named person<N>_<kind>_<M>.png, 1-4 images per person; a
    person's images are all in one class (as in the release)."""
    rng = np.random.default_rng(seed)
    persons = {}
    for p in range(n_persons):
        cls = "bacterial" if p % 3 else "viral"
        kind = "bacteria" if cls == "bacterial" else "virus"
        for m in range(int(rng.integers(1, 5))):
            write_png(root / cls / f"person{p}_{kind}_{m}.png", 5 * p + m)  # no two files alike (no copies)
        persons[f"person{p}"] = cls
    return persons


def test_kermany_style_names_never_put_a_person_in_two_splits(tmp_path):
    kermany_style_folder(tmp_path / "xr")
    by_image = build_dataset(spec("image_folder", tmp_path / "xr"))
    grouped = build_dataset(spec("image_folder", tmp_path / "xr", group_by=r"pattern:(person\d+)"))

    def persons(split):
        return {i.split("/")[-1].split("_")[0] for i in split.ids}

    # by image, some person lands in two splits (the leak this option exists for)
    assert persons(by_image.train) & (persons(by_image.val) | persons(by_image.test))
    tr, va, te = persons(grouped.train), persons(grouped.val), persons(grouped.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 40 and len(grouped.train) + len(grouped.val) + len(grouped.test) == len(
        by_image.train) + len(by_image.val) + len(by_image.test)
    assert grouped.info["split_unit"] == {"group_by": r"pattern:(person\d+)",
                                          "groups": {"train": len(tr), "val": len(va), "test": len(te)}}
    assert by_image.info["split_unit"] == "image"
    # as stratified as the groups allow: both classes in every split
    for s in (grouped.train, grouped.val, grouped.test):
        assert set(s.labels.tolist()) == {0, 1}


def test_group_split_by_hand():
    groups = [f"g{i // 3}" for i in range(60)]  # 20 groups of 3 images
    labels = np.array([(i // 3) % 2 for i in range(60)])
    tr, va, te = group_split(labels, groups, (0.6, 0.2, 0.2), seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(60))
    g = np.array(groups)
    assert not shared_groups({"train": g[tr], "val": g[va], "test": g[te]})
    # 0.2 is one fold of 5: 4 of the 20 groups (12 images) held out for test
    assert len(te) == 12 and len(set(g[te])) == 4
    with pytest.raises(ValueError, match="needs at least 5 groups; the data have 3"):
        group_split(None, ["a", "a", "b", "c"], (0.6, 0.2, 0.2))


def test_leakage_names_the_groups_and_their_splits():
    assert leakage_problem({"train": ["p1", "p2"], "test": ["p3"]}, "column:patient") is None
    msg = leakage_problem({"train": ["p1", "p2", "p2"], "val": ["p5"], "test": ["p2", "p5"]}, "column:patient")
    assert msg.startswith("group leakage: 2 group(s) of data.group_by 'column:patient' are in more than one split")
    assert "p2 in test and train" in msg and "p5 in test and val" in msg and "p1" not in msg


def test_a_manifest_that_puts_a_patient_in_train_and_test_is_refused(tmp_path):
    rows = ["path,label,split,patient"]
    for i in range(12):
        write_png(tmp_path / f"im{i}.png", i)
        split = "train" if i < 6 else "val" if i < 8 else "test"
        rows.append(f"im{i}.png,{'a' if i % 2 else 'b'},{split},P{i // 2}")
    rows[1 + 8] = rows[1 + 8].replace("P4", "P2")  # im8 (test) belongs to P2, who also has im4, im5 in train
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"group leakage: 1 group\(s\).*P2 in test and train"):
        build_dataset(spec("csv", tmp_path / "m.csv", group_by="column:patient"))
    # without the mix-up it loads, and the split unit is the patient
    rows[1 + 8] = rows[1 + 8].replace(",P2", ",P4")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = build_dataset(spec("csv", tmp_path / "m.csv", group_by="column:patient"))
    assert data.info["split_unit"]["groups"]["test"] == 2


def test_missing_group_ids_are_listed_with_every_other_problem(tmp_path):
    rows = ["path,label,patient"]
    for i in range(6):
        write_png(tmp_path / f"im{i}.png", i)
        rows.append(f"im{i}.png,{'a' if i % 2 else 'b'},{'' if i == 2 else f'P{i}'}")
    rows.append("nothere.png,a,P9")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError) as e:
        build_dataset(spec("csv", tmp_path / "m.csv", group_by="column:patient"))
    text = str(e.value)
    assert "line 4: missing group id in column 'patient'" in text and "nothere.png" in text
    with pytest.raises(ValueError, match="names column 'subject', which the manifest does not have"):
        build_dataset(spec("csv", tmp_path / "m.csv", group_by="column:subject"))


def test_files_the_pattern_does_not_match_are_named(tmp_path):
    kermany_style_folder(tmp_path / "xr", n_persons=10)
    write_png(tmp_path / "xr" / "viral" / "IM-0001-0001.png", 3)
    with pytest.raises(ValueError, match=r"all: missing group id: 1 sample\(s\) do not match .*IM-0001-0001.png"):
        build_dataset(spec("image_folder", tmp_path / "xr", group_by=r"pattern:(person\d+)"))
    groups, problems = groups_from_pattern(["a/person3_x.png", "b/IM-7.png"], r"person\d+")
    assert groups == ["person3", None] and len(problems) == 1


@pytest.mark.parametrize("value, message", [
    ("patient", "must start with one of pattern:, column:"),
    ("pattern:(unclosed", "invalid regular expression"),
    ("column:", "nothing after 'column:'"),
])
def test_bad_group_by_values_fail_in_the_spec(value, message):
    with pytest.raises(ValueError, match=message):
        spec("image_folder", "x", group_by=value)


def test_a_column_needs_a_manifest(tmp_path):
    kermany_style_folder(tmp_path / "xr", n_persons=10)
    with pytest.raises(ValueError, match="only data.source csv has columns"):
        build_dataset(spec("image_folder", tmp_path / "xr", group_by="column:patient"))
