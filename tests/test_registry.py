import pytest

from medens.registry import Registry, check_options


def make_registry():
    reg = Registry("widget")

    @reg.register("focal")
    def focal(gamma=2.0):
        return ("focal", gamma)

    @reg.register("dice")
    def dice():
        return ("dice",)

    return reg


def test_build_and_names():
    reg = make_registry()
    assert reg.names() == ["dice", "focal"]
    assert reg.build("focal", gamma=0.5) == ("focal", 0.5)
    assert "dice" in reg and "ce" not in reg
    assert len(reg) == 2


def test_duplicate_name_raises():
    reg = make_registry()
    with pytest.raises(ValueError, match="widget 'focal' is already registered"):
        reg.register("focal")(lambda: None)


def test_unknown_name_suggests_close_matches():
    reg = make_registry()
    with pytest.raises(ValueError) as e:
        reg.build("focl")
    assert "unknown widget 'focl'; did you mean 'focal'?" in str(e.value)
    assert "(known: dice, focal)" in str(e.value)


def test_unknown_name_without_match_lists_known():
    reg = make_registry()
    with pytest.raises(ValueError, match=r"unknown widget 'zzz' \(known: dice, focal\)"):
        reg.get("zzz")


def test_check_options_names_every_unknown_option():
    with pytest.raises(ValueError) as e:
        check_options("focal", {"gama": 1, "alpah": 2, "gamma": 3}, ["gamma", "alpha", "reduction"])
    msg = str(e.value)
    assert "unknown focal option 'gama'; did you mean 'gamma'?" in msg
    assert "unknown focal option 'alpah'; did you mean 'alpha'?" in msg
    check_options("focal", {"gamma": 1}, ["gamma"])  # no error
