"""What a member shows while it trains: one plain line per epoch off a terminal, the bar on one."""

import re
import sys

import pytest

from medens.config import TrainingSpec
from medens.training import fit
from medens.training.progress import EpochLines, choose_display, format_duration

LINE = re.compile(r"^member=(\S+) epoch=(\d+)/(\d+) train_loss=(\d+\.\d{4}) val_loss=(\d+\.\d{4}) "
                  r"val_mcc=(-?\d+\.\d{4}) seconds=(\d+\.\d) eta=(\S+)$")


def _spec():
    return TrainingSpec(epochs=2, min_steps=0, batch_size=32, lr=3e-3, patience=None, plateau_patience=None,
                        augment=False, device="cpu")


def test_display_follows_the_terminal_unless_told():
    assert choose_display(None, isatty=True) == "bar"
    assert choose_display(None, isatty=False) == "lines"
    assert choose_display(True, isatty=False) == "bar"
    assert choose_display(False, isatty=True) == "none"


def test_durations_and_eta_by_hand():
    assert [format_duration(s) for s in (0, 42.4, 187, 7500)] == ["0s", "42s", "3m07s", "2h05m"]
    lines = EpochLines("m1", 5, "val_loss")
    row = {"train_loss": 0.5, "val_loss": 0.25}
    assert lines.line({**row, "epoch": 1, "seconds": 10.0}).endswith("seconds=10.0 eta=40s")  # 10 s x 4 left
    second = lines.line({**row, "epoch": 2, "seconds": 20.0})  # mean 15 s x 3 left
    assert second == "member=m1 epoch=2/5 train_loss=0.5000 val_loss=0.2500 seconds=20.0 eta=45s"


def test_off_a_terminal_each_epoch_prints_one_line(cells32, tmp_path, capsys):
    assert not sys.stderr.isatty()
    res = fit("compact_cnn", "ce", cells32, _spec(), tmp_path / "m", seed=1, extra_manifest={"member_id": "m07"})
    err = capsys.readouterr().err
    found = [LINE.match(line) for line in err.splitlines() if line.startswith("member=")]
    assert len(found) == 2 and all(found), err
    for m, row in zip(found, res.history, strict=True):
        member, epoch, total, train_loss, val_loss, mcc, seconds, _ = m.groups()
        assert (member, int(epoch), int(total)) == ("m07", row["epoch"], 2)
        assert float(train_loss) == pytest.approx(row["train_loss"], abs=5e-5)
        assert float(val_loss) == pytest.approx(row["val_loss"], abs=5e-5)
        assert float(mcc) == pytest.approx(row["val_mcc"], abs=5e-5)
        assert float(seconds) == pytest.approx(row["seconds"], abs=0.05)
    assert found[-1].group(8) == "0s"  # nothing left after the last epoch
    assert "epoch 1/2" not in err  # no bar


def test_on_a_terminal_the_bar_and_no_lines(cells32, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit("compact_cnn", "ce", cells32, _spec(), tmp_path / "m", seed=1, extra_manifest={"member_id": "m07"})
    err = capsys.readouterr().err
    assert "m07 epoch 1/2" in err and "m07 epoch 2/2" in err  # the bar drew, named by the member
    assert not [line for line in err.splitlines() if line.startswith("member=")]


def test_progress_false_is_quiet(cells32, tmp_path, capsys):
    fit("compact_cnn", "ce", cells32, _spec(), tmp_path / "m", seed=1, progress=False)
    assert capsys.readouterr().err == ""
