import ast

import pytest

from medens.cli import main


def _markdown_rows(out: str) -> dict[str, dict[str, list[str]]]:
    """The loss tables of ``medens losses list --format markdown``: section -> name -> cells."""
    tables: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in out.splitlines():
        if line.startswith("## "):
            section = line.split("task=")[1].split('"')[1]
            tables[section] = {}
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").replace("\\|", "/").split("|")]
            tables[section][cells[0].strip("`")] = cells[1:]
    return tables


def test_losses_list_prints_the_registry_table(capsys):
    from medens.losses import default_params, names, needs_class_counts

    assert main(["losses", "list", "--format", "markdown"]) == 0
    tables = _markdown_rows(capsys.readouterr().out)
    assert list(tables) == ["classification", "segmentation"]
    for task, rows in tables.items():
        assert sorted(rows) == sorted(names(task)) and len(rows) == len(names(task))
        for name, (_formula, params, counts, _source) in rows.items():
            # every option with its default, as the factory's signature has it (floats to 6 digits)
            shown = dict(kv.split("=", 1) for kv in params.strip("`").split(", "))
            defaults = default_params(name, task)
            assert list(shown) == list(defaults), (task, name)
            for key, value in defaults.items():
                got = ast.literal_eval(shown[key])
                assert got == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), (name, key)
            if counts.startswith("if "):  # needed only with that option, e.g. "if weight='balanced'"
                key, value = counts[3:].split("=")
                assert needs_class_counts(name, task, **{key: value.strip("'")}), (task, name, counts)
                assert not needs_class_counts(name, task, **{key: None}), (task, name, counts)
            else:
                assert counts in ("yes", "no") and (counts == "yes") == needs_class_counts(name, task), (name, counts)
    # facts of the literature, written here, not read from the registry
    assert tables["classification"]["focal"][0] == "-sum_k alpha_k y_k (1 - p_k)^gamma log p_k"
    assert tables["classification"]["focal"][3] == "Lin et al., ICCV 2017"
    assert tables["classification"]["ldam"][2] == "yes" and tables["classification"]["ce"][2] == "if weight='balanced'"
    assert tables["segmentation"]["dice"][1].startswith("`include_background=True, smooth_nr=1e-05")
    # --task keeps one table, and the default format is not markdown
    assert main(["losses", "list", "--task", "segmentation", "--format", "markdown"]) == 0
    assert list(_markdown_rows(capsys.readouterr().out)) == ["segmentation"]
    assert main(["losses", "list"]) == 0
    text = capsys.readouterr().out
    assert "| `focal` |" not in text and "    source:       Lin et al., ICCV 2017" in text


def test_unknown_preset_is_a_clean_error(capsys):
    assert main(["data", "summary", "--preset", "rbc-dem"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medens: error: unknown preset 'rbc-dem'; did you mean 'rbc-demo'")


def test_presets_command_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("rbc-demo", "rbc-paper", "cxr3-multiloss", "seg-demo", "seg-exp"):
        assert name in out


def test_train_cli_writes_an_artifact(tmp_path, capsys):
    import json

    import yaml

    spec = {
        "name": "tiny", "models": ["compact_cnn"], "losses": ["ce", "focal"],
        "data": {"source": "synthetic_cells", "image_size": 32,
                 "synthetic": {"counts": {"codocyte": 20, "hypochromia": 20, "normal": 60}}},
        "training": {"epochs": 3, "min_steps": 0, "batch_size": 32, "patience": None},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "member"
    assert main(["train", "--spec", str(path), "--loss", "focal", "--out", str(out), "--epochs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["artifact"] == str(out) and summary["epochs_run"] == 1
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["loss"]["name"] == "focal" and manifest["training"]["epochs"] == 1


def test_make_synthetic_writes_layouts_the_sources_read(tmp_path, capsys):
    import numpy as np

    from medens.data.sources import image_folder, seg_folder

    assert main(["data", "make-synthetic", "--kind", "cells", "--out", str(tmp_path / "cells"),
                 "--counts", "codocyte=4,hypochromia=3,normal=5", "--size", "32"]) == 0
    pool = image_folder(str(tmp_path / "cells"), size=32, channels=3)
    assert pool.class_names == ["codocyte", "hypochromia", "normal"]
    assert np.bincount(pool.parts["all"].labels).tolist() == [4, 3, 5]
    assert main(["data", "make-synthetic", "--kind", "segmentation", "--out", str(tmp_path / "seg"),
                 "--n", "6", "--size", "64"]) == 0
    seg = seg_folder(str(tmp_path / "seg"), size=64, channels=1)
    assert seg.parts["all"].masks.shape == (6, 64, 64)
    assert main(["data", "make-synthetic", "--kind", "smears", "--out", str(tmp_path / "sm"), "--n", "2"]) == 0
    ann = __import__("json").loads((tmp_path / "sm" / "annotations.json").read_text())
    assert sorted(ann) == ["smear-0000.png", "smear-0001.png"]
    assert all({"center", "radius", "class"} <= set(c) for c in ann["smear-0000.png"])
    assert main(["data", "make-synthetic", "--kind", "cells", "--out", str(tmp_path / "x"),
                 "--counts", "codocyte=abc"]) == 2
    assert "--counts must look like" in capsys.readouterr().err


def test_data_summary_writes_and_prints(tmp_path, capsys):
    import json

    import yaml

    spec = {"name": "tiny-seg", "task": "segmentation", "models": ["basic_unet"], "losses": ["dice"],
            "data": {"source": "synthetic_segmentation", "image_size": 64, "channels": 1,
                     "synthetic": {"n_images": 40}, "sampling_method": True}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["data", "summary", "--spec", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "d"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["n"] == 28 and summary["splits"]["test"]["n"] == 6
    assert summary["splits"]["train_crops"]["n"] == summary["info"]["sampling_method_crops"] > 0
    from medens.data import SplitData

    again = SplitData.load(tmp_path / "d")
    assert again.extras["train_crops"].images.shape[1:] == (64, 64, 1)


def test_serve_refuses_what_is_not_an_ensemble_before_starting(tmp_path, capsys):
    assert main(["serve", "--model-dir", str(tmp_path / "nowhere")]) == 2
    assert "is not an ensemble artifact (ensemble.json is missing); the path does not exist" in capsys.readouterr().err
    assert main(["serve", "--model-dir", str(tmp_path), "--max-batch", "0"]) == 2
    assert "max_batch must be >= 1, got 0" in capsys.readouterr().err


def test_make_serve_serves_runs_latest():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-n", "serve"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert ".venv/bin/medens serve --model-dir runs/latest --http-port 8080" in out
