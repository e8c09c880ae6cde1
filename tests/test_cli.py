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
