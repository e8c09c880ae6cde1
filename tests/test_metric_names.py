"""The metric names that medens.config validates against agree with the implementations."""

import pytest

from medens import metric_names
from medens.config import parse_spec
from medens.ensemble import selection
from medens.evaluation import gate, metrics


def test_ranking_names_and_directions_are_the_selection_metrics():
    assert sorted(selection.METRICS) == sorted(metric_names.RANKING_METRICS)
    assert selection.HIGHER_IS_BETTER == metric_names.RANKING_METRICS


def test_evaluation_names_and_directions_are_the_evaluation_metrics():
    assert sorted(metrics.METRICS) == sorted(metric_names.EVALUATION_METRICS)
    assert metrics.HIGHER_IS_BETTER == metric_names.EVALUATION_METRICS


def test_segmentation_gate_names_are_the_gate_metrics():
    assert sorted(gate.SEGMENTATION_METRICS) == sorted(metric_names.SEGMENTATION_GATE_METRICS)


@pytest.mark.parametrize("name", sorted(metric_names.RANKING_METRICS))
def test_config_accepts_every_ranking_metric(name):
    spec = {"name": "t", "models": ["compact_cnn"], "losses": ["ce"], "ensemble": {"rank_metric": name}}
    assert parse_spec(spec).ensemble.rank_metric == name


@pytest.mark.parametrize("name", sorted(metric_names.EVALUATION_METRICS))
def test_config_gates_on_every_higher_is_better_metric_only(name):
    spec = {"name": "t", "models": ["compact_cnn"], "losses": ["ce"], "evaluation": {"gate_metric": name}}
    if metric_names.EVALUATION_METRICS[name]:
        assert parse_spec(spec).evaluation.gate_metric == name
    else:
        with pytest.raises(ValueError, match=f"unknown gate metric '{name}'"):
            parse_spec(spec)
