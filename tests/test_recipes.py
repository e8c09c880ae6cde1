"""Named recipes (``recipe: imbalanced-2d``): expanded into the spec at parse time, every field
overridable, recorded expanded in a run's spec.yaml, listed by ``medens recipes``; and the spec
defaults that give small data enough optimiser steps (issue 22)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medens.cli import main
from medens.config import DEFAULT_MIN_STEPS, TrainingSpec, load_recipe, parse_spec, recipe_names
from tests._scripts import load_script

BASE = {"name": "r", "models": ["compact_cnn"], "losses": ["ce"]}


def test_imbalanced_2d_expands_into_the_spec_fields():
    spec = parse_spec({**BASE, "recipe": "imbalanced-2d"})
    t, e, ev = spec.training, spec.ensemble, spec.evaluation
    # the fields of benchmarks/real_data.py's spec, checked by hand
    assert (t.optimizer, t.lr, t.weight_decay, t.schedule, t.warmup_epochs, t.min_lr_ratio) == (
        "adamw", 2e-3, 0.05, "cosine", 1.0, 0.02)
    assert (t.ema_decay, t.grad_clip, t.augment, t.epochs, t.min_steps, t.patience, t.monitor) == (
        0.99, 5.0, "flips", 30, 600, None, "macro_f1")
    assert (t.batch_size, t.plateau_patience, t.class_weights, t.tta, t.calibrate) == (64, None, "none", "flips", True)
    assert e.methods == ["mean", "mean_la", "weighted", "stacking"] and e.top_k == [3, 6]
    assert e.rank_metric == "macro_f1" and e.model_level is False and ev.gate_metric == "macro_f1"
    # what the recipe does not set keeps the spec default
    assert ev.bootstrap == 2000 and t.flips == "both" and spec.recipe == "imbalanced-2d"


def test_the_users_values_win_field_by_field():
    spec = parse_spec({**BASE, "recipe": "imbalanced-2d", "training": {"lr": 1e-3, "optimizer": "sgd"},
                       "ensemble": {"top_k": [2]}, "evaluation": {"gate_metric": "mcc"}})
    assert spec.training.lr == 1e-3 and spec.training.optimizer == "sgd"
    assert spec.training.schedule == "cosine" and spec.training.min_steps == 600  # the rest from the recipe
    assert spec.ensemble.top_k == [2] and spec.ensemble.rank_metric == "macro_f1"
    assert spec.evaluation.gate_metric == "mcc"
    # a model's own training overrides still replace the (expanded) experiment settings for its members
    spec = parse_spec({**BASE, "recipe": "imbalanced-2d", "models": [{"name": "compact_cnn",
                                                                      "training": {"epochs": 5}}]})
    assert spec.models[0].training_for(spec.training).epochs == 5
    assert spec.models[0].training_for(spec.training).optimizer == "adamw"


def test_unknown_recipe_says_did_you_mean():
    with pytest.raises(ValueError, match=r"recipe: unknown recipe 'imbalanced2d'; did you mean 'imbalanced-2d'\?"):
        parse_spec({**BASE, "recipe": "imbalanced2d"})
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        load_recipe("nope")
    # a bad field under the recipe is still reported at its YAML path
    with pytest.raises(ValueError, match=r"training\.optimiser: unknown key; did you mean 'optimizer'"):
        parse_spec({**BASE, "recipe": "imbalanced-2d", "training": {"optimiser": "adam"}})


def test_every_packaged_recipe_is_a_valid_spec():
    assert "imbalanced-2d" in recipe_names()
    for name in recipe_names():
        recipe = load_recipe(name)
        assert recipe["description"]
        spec = parse_spec({**BASE, "recipe": name})
        for section in ("training", "ensemble", "evaluation"):
            for key, value in recipe.get(section, {}).items():
                assert spec.to_dict()[section][key] == value, (name, section, key)


def test_a_saved_spec_records_the_expanded_fields_and_reloads_the_same():
    spec = parse_spec({**BASE, "recipe": "imbalanced-2d", "training": {"lr": 1e-3}})
    saved = yaml.safe_load(spec.to_yaml())
    assert saved["recipe"] == "imbalanced-2d"
    assert saved["training"]["optimizer"] == "adamw" and saved["training"]["min_steps"] == 600
    assert saved["training"]["lr"] == 1e-3 and saved["ensemble"]["top_k"] == [3, 6]
    assert parse_spec(saved) == spec
    assert "recipe" not in parse_spec(BASE).to_dict()  # specs without one are saved as before


def test_a_runs_spec_yaml_records_the_expanded_recipe(tmp_path):
    from medens.stages import run_experiment

    spec = parse_spec({
        **BASE, "recipe": "imbalanced-2d",
        "data": {"source": "synthetic_cells", "image_size": 16,
                 "synthetic": {"counts": {"codocyte": 20, "hypochromia": 20, "normal": 40}}},
        # short training (the run is about the saved spec), everything else from the recipe
        "training": {"epochs": 1, "min_steps": 0, "batch_size": 32},
        "evaluation": {"bootstrap": 100, "gradcam": False},
    })
    run_experiment(spec, tmp_path / "run", log=lambda *_: None, register=False)
    saved = yaml.safe_load((tmp_path / "run" / "spec.yaml").read_text())
    assert saved["recipe"] == "imbalanced-2d"
    t = saved["training"]
    assert (t["optimizer"], t["schedule"], t["ema_decay"], t["tta"], t["monitor"]) == (
        "adamw", "cosine", 0.99, "flips", "macro_f1")
    assert (t["epochs"], t["min_steps"]) == (1, 0)  # the spec's own values, not the recipe's 30 and 600
    assert saved["evaluation"]["gate_metric"] == "macro_f1"
    manifest = yaml.safe_load((tmp_path / "run" / "members" / "compact_cnn__ce" / "model.json").read_text())
    assert manifest["training"]["optimizer"] == "adamw" and manifest["training"]["ema_decay"] == 0.99


def test_medens_recipes_lists_and_shows(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("imbalanced-2d ") and "medens recipes imbalanced-2d" in out
    assert main(["recipes", "imbalanced-2d"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == {k: v for k, v in load_recipe("imbalanced-2d").items() if k != "description"}
    assert main(["recipes", "imbalanced"]) == 2
    assert "did you mean 'imbalanced-2d'" in capsys.readouterr().err


def test_the_benchmark_uses_the_recipe_by_name_and_gets_its_old_spec():
    module = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py", "real_data_recipe_check")
    base = module.default_spec()
    assert base["recipe"] == "imbalanced-2d" and "training" not in base and "ensemble" not in base
    spec = parse_spec(base)
    assert spec.training.min_steps == 600 and spec.ensemble.top_k == [3, 6]
    assert spec.evaluation.gate_metric == "macro_f1" and spec.evaluation.bootstrap == 1000


def test_default_training_length_follows_steps():
    t = TrainingSpec()
    assert t.min_steps == DEFAULT_MIN_STEPS >= 300  # a few hundred optimiser steps whatever the data's size
    assert TrainingSpec(min_steps=0).min_steps == 0  # epochs alone, when asked for
