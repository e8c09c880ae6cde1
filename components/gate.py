"""Champion gate: promote the challenger only when a paired test says it beats the champion."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def gate(spec: str, challenger: Input[Model], dataset: Input[Dataset], decision: Output[Metrics],
         store_uri: str = "", store_endpoint: str = "", model_name: str = "", version: str = "",
         run_id: str = "") -> bool:
    """Compare the challenger with the registered champion on the same test images; record the decision.

    Every decision (promote or keep) is appended to ``<model_name>/history/`` in the store with
    both versions, the metric values, the p-value, the data fingerprint and the time.

    Args:
        spec: the experiment spec as YAML text (gate metric, alpha, bootstrap, seed).
        challenger: the new best system (ensemble artifact).
        dataset: the dataset directory whose test split both systems predict.
        decision: champion and challenger values, difference and p-value.
        store_uri: the model repository (default: the spec's ``store.uri``).
        store_endpoint: S3 endpoint (default: the spec's, then ``MINIO_ENDPOINT``).
        model_name: the registered name (default: the spec's name).
        version: the challenger's version if registered (default: ``run_id``).
        run_id: the pipeline run's id.

    Returns:
        True when the challenger is promoted.
    """
    from medens.stages import champion_gate, spec_from_text

    d = champion_gate(spec_from_text(spec), challenger.path, dataset.path, store_uri=store_uri, name=model_name,
                      endpoint=store_endpoint or None, version=version or run_id)
    for key, value in (("champion", d.champion), ("challenger", d.challenger), ("difference", d.difference),
                       ("p_value", d.p_value)):
        if value is not None:
            decision.log_metric(key, float(value))
    decision.metadata.update({"promote": d.promote, "reason": d.reason, "metric": d.metric,
                              "test": d.test or "", "champion_version": d.champion_version or ""})
    print(d.reason)
    return d.promote
