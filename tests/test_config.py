import hashlib
from pathlib import Path

import pytest
import yaml

from medens.config import ExperimentSpec, load_spec, parse_spec, preset_names

PRESETS = ["cxr3-multiloss", "rbc-demo", "rbc-paper", "seg-demo", "seg-exp"]


def minimal():
    return {"name": "t", "models": ["compact_cnn"], "losses": ["ce"]}


def test_every_preset_is_packaged_and_valid():
    assert preset_names() == PRESETS
    for name in PRESETS:
        spec = load_spec(name)
        assert spec.name == name
        assert len(spec.pairs()) == len(spec.models) * len(spec.losses)


def test_preset_facts_match_the_studies():
    paper = load_spec("rbc-paper")
    assert paper.data.synthetic.counts == {"codocyte": 345, "hypochromia": 356, "normal": 2691}
    assert paper.data.image_size == 224
    assert paper.training.optimizer == "adam" and paper.training.lr == 1e-3 and paper.training.batch_size == 32
    cxr = load_spec("cxr3-multiloss")
    assert len(cxr.losses) == 12 and cxr.training.optimizer == "sgd" and cxr.training.nesterov
    # study 1's twelve: seven base losses and the five calibrated (DCA) ones of docs/methods.md section 3.2
    names = [lo.name for lo in cxr.losses]
    assert {"dca_ce", "dca_kl", "dca_focal", "dca_hinge", "dca_negative_entropy"} <= set(names)
    assert "negative_entropy_ce" not in names and len(set(names)) == 12
    assert cxr.ensemble.top_k == [3, 5]
    seg = load_spec("seg-exp")
    assert seg.task == "segmentation" and seg.data.sampling_method and seg.data.image_size == 256


def test_yaml_round_trip(tmp_path):
    spec = load_spec("rbc-demo")
    path = spec.save(tmp_path / "spec.yaml")
    again = load_spec(str(path))
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()


def test_component_shorthand_and_key():
    spec = parse_spec({**minimal(), "losses": ["ce", {"name": "focal", "params": {"gamma": 2, "alpha": 1.5}}]})
    assert [loss.key for loss in spec.losses] == ["ce", "focal-alpha=1.5-gamma=2"]
    # a local weights file: the model's alias and a short hash of the path (weights_strict does not
    # change the model), never the path itself (the key names directories and artifacts)
    model = {"name": "timm_efficientnet_lite0",
             "params": {"weights_path": "/opt/w/efficientnet-lite0-57934424.pth", "weights_strict": False}}
    spec = parse_spec({**minimal(), "models": [model]})
    digest = hashlib.sha256(b'{"weights_path": "/opt/w/efficientnet-lite0-57934424.pth"}').hexdigest()[:8]
    assert spec.models[0].key == f"lite0-{digest}"
    assert spec.models[0].params["weights_path"] == "/opt/w/efficientnet-lite0-57934424.pth"


def test_unknown_keys_are_rejected_with_path_and_suggestion():
    data = minimal()
    data["trainig"] = {}
    data["data"] = {"image_sise": 32}
    with pytest.raises(ValueError) as e:
        parse_spec(data)
    msg = str(e.value)
    assert "(2 problems)" in msg
    assert "trainig: unknown key; did you mean 'training'?" in msg
    assert "data.image_sise: unknown key; did you mean 'image_size'?" in msg


def test_one_error_lists_every_problem_with_its_yaml_path():
    data = minimal()
    data["training"] = {"lr": -1, "optimizer": "rmsprop", "batch_size": 0}
    data["data"] = {"split": {"train": 0.5, "val": 0.1, "test": 0.1}, "channels": 2}
    with pytest.raises(ValueError) as e:
        parse_spec(data, source="my.yaml")
    msg = str(e.value)
    assert msg.startswith("invalid experiment spec my.yaml (5 problems):")
    assert "training.lr: Input should be greater than 0" in msg
    assert "training.optimizer: Input should be 'adam', 'adamw' or 'sgd' (got 'rmsprop')" in msg
    assert "training.batch_size: Input should be greater than or equal to 1" in msg
    assert "data.split: train + val + test must be 1, got 0.7" in msg
    assert "data.channels: Input should be 1 or 3 (got 2)" in msg


def test_missing_required_fields():
    with pytest.raises(ValueError) as e:
        parse_spec({"name": "x"})
    assert "models: Field required" in str(e.value)
    assert "losses: Field required" in str(e.value)


def test_cross_field_problems():
    data = {**minimal(), "task": "segmentation", "losses": ["dice", "dice"]}
    with pytest.raises(ValueError) as e:
        parse_spec(data)
    msg = str(e.value)
    assert "'synthetic_cells' is a classification source but task is segmentation" in msg
    assert "losses: listed more than once: dice" in msg


def test_load_by_path_and_unknown_preset(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(minimal()))
    assert load_spec(p).name == "t"
    with pytest.raises(ValueError, match="unknown preset 'rbc-dem'; did you mean 'rbc-demo'"):
        load_spec("rbc-dem")
    with pytest.raises(ValueError, match="spec file .*nope.yaml does not exist"):
        load_spec(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a mapping, got list"):
        load_spec(lst)


def test_spec_is_a_pydantic_model():
    spec = ExperimentSpec(name="x", models=["compact_cnn"], losses=["ce"])
    assert spec.training.monitor == "auto"
    assert Path(spec.store.uri) == Path("runs")


def test_unknown_or_lower_better_gate_metric_is_refused_before_training():
    with pytest.raises(ValueError) as e:
        parse_spec({**minimal(), "evaluation": {"gate_metric": "mmc"}})
    assert "evaluation.gate_metric: unknown gate metric 'mmc'; did you mean 'mcc'?" in str(e.value)
    # Brier and ECE are lower-is-better: the leaderboard ranks higher first, so they cannot gate
    with pytest.raises(ValueError, match="gate_metric: unknown gate metric 'brier'"):
        parse_spec({**minimal(), "evaluation": {"gate_metric": "brier"}})
    assert parse_spec({**minimal(), "evaluation": {"gate_metric": "auroc_macro"}}).evaluation.gate_metric == "auroc_macro"
    # f1_macro is the old spelling of macro_f1 (medens.metric_names.ALIASES): accepted with a warning
    # (tests/test_metrics_one_source.py); a misspelling is still refused with the close match
    with pytest.raises(ValueError, match="ensemble.rank_metric: unknown metric 'macro_f2'; did you mean 'macro_f1'"):
        parse_spec({**minimal(), "ensemble": {"rank_metric": "macro_f2"}})


def test_segmentation_gate_metric_is_dice_or_iou():
    seg = load_spec("seg-demo").to_dict()
    seg["evaluation"]["gate_metric"] = "mcc"          # the default: gated on Dice
    assert parse_spec(seg).evaluation.gate_metric == "mcc"
    seg["evaluation"]["gate_metric"] = "hd95"          # lower is better
    with pytest.raises(ValueError, match="unknown gate metric 'hd95'.*known: dice, iou"):
        parse_spec(seg)
