"""Scheduled retraining: new data -> train -> evaluate -> champion gate -> register and deploy.

The challenger (the best system trained on the new data) replaces the champion registered under
the model name only when it is better on the gate metric and a paired test on the same new test
images gives p < alpha (``components.gate``); registration and deployment sit inside
``dsl.If(gate == True)``, so a losing challenger changes nothing that serves.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model

from components import deploy, evaluate, gate, register
from pipelines._experiment import experiment_dag
from pipelines.settings import current

_S = current()


class RetrainingOutputs(NamedTuple):
    dataset: Dataset
    evaluation: Artifact
    challenger: Model
    promoted: bool


@dsl.pipeline(name="medens-retraining",
              description="medens: retrain on new data; promote the challenger only when it beats the champion")
def retraining_pipeline(
    spec: str,
    data_uri: str = "",
    store_uri: str = "",
    store_endpoint: str = _S.minio_endpoint,
    model_name: str = "",
    version: str = "",
    deploy_model: bool = True,
    namespace: str = _S.namespace,
) -> RetrainingOutputs:
    """Retrain, gate and (when the challenger wins) register and deploy.

    Args:
        spec: the experiment spec as YAML text; its task picks the metrics.
        data_uri: the new data (``s3://bucket/prefix`` or a folder) replacing ``data.path``;
            empty keeps the spec's data.
        store_uri, store_endpoint, model_name, version: the model repository and the name the
            champion is registered under (defaults: the spec's ``store.uri`` and name).
        deploy_model: deploy a promoted challenger to KServe.
        namespace: the InferenceService's (the chart owns it; a promotion rolls it over to the new version).
    """
    s = current()
    t = experiment_dag(spec, s, evaluate, data_uri=data_uri, store_uri=store_uri,
                       store_endpoint=store_endpoint, model_name=model_name)
    g = gate(spec=spec, challenger=t.evaluate.outputs["best"], dataset=t.preprocess.outputs["dataset"],
             store_uri=store_uri, store_endpoint=store_endpoint, model_name=model_name, version=version,
             run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    g.after(t.predict)
    s.cpu_task(g, name="champion gate")
    s.store_access(g)
    with dsl.If(g.outputs["Output"] == True, name="challenger-wins"):  # noqa: E712 - a pipeline condition
        reg = register(spec=spec, best=t.evaluate.outputs["best"], store_uri=store_uri, store_endpoint=store_endpoint,
                       model_name=model_name, version=version, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        s.cpu_task(reg)
        s.store_access(reg)
        with dsl.If(deploy_model == True, name="deploy-requested"):  # noqa: E712
            dep = deploy(name=reg.outputs["name"], namespace=namespace, version=reg.outputs["version"],
                     storage_uri=reg.outputs["uri"])
            s.cpu_task(dep)
    return RetrainingOutputs(dataset=t.preprocess.outputs["dataset"], evaluation=t.evaluate.outputs["evaluation"],
                             challenger=t.evaluate.outputs["best"], promoted=g.outputs["Output"])
