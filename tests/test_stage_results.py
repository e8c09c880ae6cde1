"""medens.stages.results: the typed stage results load the JSON earlier runs wrote, and write it back."""

import json
import math

import pytest
from pydantic import ValidationError

from medens.config import ComponentSpec, ModelSpec
from medens.stages.results import (
    EnsembleIndex,
    EvaluationResult,
    EvaluationSummary,
    GateDecision,
    GridEntry,
    MemberResult,
)

# summary.json as the evaluation stage wrote it before the results were typed ("best", no "selected")
OLD_SUMMARY = {
    "best": "mean-top2", "best_path": "/run/ensembles/mean-top2", "gate_metric": "mcc", "reference": "cnn__ce",
    "selection_rule": "highest validation mcc", "selection_score": 0.71,
    "selection_mode": {"mode": "validation", "requested": "auto", "reason": "r", "folds": None, "fits": 2,
                       "rule": "rule"},
    "classical_member": None, "best_on_test": "cnn__ce", "skipped": {"stacking-top2": "too few"},
    "leaderboard": [{"#": 1, "system": "mean-top2", "val mcc": "0.710"}], "report": "report.html",
    "members": ["cnn__ce", "cnn__focal"], "ensembles": ["mean-top2"], "data_source": {"kind": "generated"},
    "collapsed": {}, "quality": "ok", "best_metrics": {"mcc": 0.64, "accuracy": 0.8},
}

# metrics.json before: "selected" and "best" both, plus whatever medens.evaluation.systems returned
OLD_METRICS = {
    "systems": {"cnn__ce": {"kind": "member", "metrics": {"mcc": 0.6, "auroc_macro": float("nan")}},
                "mean-top2": {"kind": "ensemble", "metrics": {"mcc": 0.64}}},
    "reference": "cnn__ce", "comparisons": [{"system": "mean-top2", "p_value": 0.3}],
    "experiment": "wf", "task": "classification", "gate_metric": "mcc", "selection_rule": "rule",
    "selection_mode": {"mode": "validation"}, "classical_member": None,
    "selection": {"cnn__ce": {"score": 0.6, "basis": "validation predictions"},
                  "mean-top2": {"score": 0.71, "basis": "5-fold cross-fitted validation predictions", "folds": 5}},
    "selected": "mean-top2", "leaderboard": ["mean-top2", "cnn__ce"], "best": "mean-top2", "best_kind": "ensemble",
    "best_path": "/run/ensembles/mean-top2", "best_on_test": "mean-top2", "skipped": {}, "n_test": 60,
    "data_source": {"kind": "generated"}, "collapsed": {}, "quality": "ok",
}


def test_grid_entry_reads_the_dict_and_json_the_pipelines_passed():
    old = {"id": "cnn__focal-gamma=2.0", "model": {"name": "compact_cnn", "params": {}},
           "loss": {"name": "focal", "params": {"gamma": 2.0}}, "train_on": "train"}
    entry = GridEntry.parse(json.dumps(old))
    assert entry == GridEntry.parse(old) == GridEntry.parse(entry)
    assert entry.model == ModelSpec(name="compact_cnn") and entry.loss == ComponentSpec(name="focal",
                                                                                      params={"gamma": 2.0})
    assert json.loads(entry.model_dump_json()) == old  # the same JSON goes to a train task as before
    # train_on was optional in the dicts train_member accepted
    assert GridEntry.parse({k: v for k, v in old.items() if k != "train_on"}).train_on == "train"


def test_grid_entry_refuses_a_misspelt_key_or_an_unknown_split():
    with pytest.raises(ValidationError, match="train_onn"):
        GridEntry.parse({"id": "a", "model": {"name": "compact_cnn"}, "loss": {"name": "ce"}, "train_onn": "train"})
    with pytest.raises(ValidationError, match="train_on"):
        GridEntry.parse({"id": "a", "model": {"name": "compact_cnn"}, "loss": {"name": "ce"}, "train_on": "test"})


def test_an_old_summary_loads_with_best_read_as_selected(tmp_path):
    s = EvaluationSummary.model_validate(OLD_SUMMARY)
    assert s.selected == "mean-top2" and s.best_metrics == {"mcc": 0.64, "accuracy": 0.8}
    assert s.uri is None and s.quality_reason is None
    written = json.loads(s.write(tmp_path / "summary.json").read_text())
    assert written["selected"] == "mean-top2" and "best" not in written  # one key, not two
    assert EvaluationSummary.read(tmp_path / "summary.json") == s


def test_an_old_metrics_file_loads_and_keeps_what_it_does_not_type(tmp_path):
    m = EvaluationResult.model_validate(OLD_METRICS)
    assert m.selected == "mean-top2" and m.selection["mean-top2"]["folds"] == 5 and m.n_test == 60
    assert m.comparisons == [{"system": "mean-top2", "p_value": 0.3}]  # an untyped key, kept
    path = m.write(tmp_path / "metrics.json")
    text = path.read_text()
    assert "NaN" in text  # written as json.dumps writes it, as before
    back = json.loads(text)
    assert "best" not in back and back["selected"] == "mean-top2" and back["reference"] == "cnn__ce"
    again = EvaluationResult.read(path)
    assert math.isnan(again.systems["cnn__ce"]["metrics"]["auroc_macro"]) and again.selected == "mean-top2"


def test_a_result_without_its_selection_is_refused():
    with pytest.raises(ValidationError, match="selected"):
        EvaluationSummary.model_validate({k: v for k, v in OLD_SUMMARY.items() if k != "best"})


def test_an_old_ensembles_index_loads(tmp_path):
    old = {"made": ["mean-top2"], "skipped": {"stacking-top2": "needs 2"},
           "selection": {"mean-top2": {"basis": "5-fold cross-fitted validation predictions", "folds": 5},
                         "weighted-top2": {"basis": None, "reason": "cross-fitting failed: x"}}}
    index = EnsembleIndex.model_validate(old)  # written before collapsed_members existed
    assert index.collapsed_members == {} and index.selection["weighted-top2"].basis is None
    assert index.selection["weighted-top2"].reason == "cross-fitting failed: x"
    assert EnsembleIndex.read(index.write(tmp_path / "ensembles.json")) == index
    assert EnsembleIndex().made == [] and EnsembleIndex().selection == {}


def test_an_old_gate_decision_and_a_member_manifest_load():
    decision = {"metric": "mcc", "alpha": 0.05, "n": 60, "collapsed": False, "promote": True, "champion": None,
                "challenger": 0.64, "difference": None, "p_value": None, "test": None, "reason": "no champion",
                "split": "test", "champion_version": None, "challenger_version": "v1",
                "challenger_system": "mean-top2", "time": "2026-01-01T00:00:00Z", "decision": "promote",
                "data_fingerprint": "ab12", "data_source": "generated:synthetic_cells"}
    d = GateDecision.model_validate(decision)
    assert d.promote is True and d.challenger == 0.64 and d.model_dump() == decision
    with pytest.raises(ValidationError, match="decision"):
        GateDecision.model_validate({**decision, "decision": "maybe"})
    manifest = {"member_id": "cnn__ce", "best_epoch": 3, "val_metrics": {"mcc": 0.5}, "history": [{"epoch": 1}]}
    m = MemberResult.model_validate(manifest)
    assert (m.member_id, m.best_epoch, m.collapsed, m.cv) == ("cnn__ce", 3, False, None)
    assert m.history == [{"epoch": 1}]  # the rest of model.json is kept
