from medens.cli import main


def test_losses_list_prints_the_registry_table(capsys):
    from medens.losses import format_table, names

    assert main(["losses", "list", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_table(fmt="markdown").strip()
    for name in names("classification") + names("segmentation"):
        assert name in out


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
        "training": {"epochs": 3, "batch_size": 32, "patience": None},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "member"
    assert main(["train", "--spec", str(path), "--loss", "focal", "--out", str(out), "--epochs", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["artifact"] == str(out) and summary["epochs_run"] == 1
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["loss"]["name"] == "focal" and manifest["training"]["epochs"] == 1
