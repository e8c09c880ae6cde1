"""The classification experiment: every (model, loss) pair, ensembles, report, registration.

preprocess -> ParallelFor(train, one task per (model, loss) pair of the spec, on GPU nodes)
-> ensemble (every prediction-level ensemble and the model-level fusion) -> evaluate (metrics,
confusion matrix, ROC) -> report (HTML) and predict (the packaged winner on test) -> register
(publish to the store as the champion) -> deploy (KServe), when ``deploy_model`` is true.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Model

from components import deploy, evaluate, register
from pipelines._experiment import experiment_dag
from pipelines.settings import current

_S = current()


class ExperimentOutputs(NamedTuple):
    dataset: Dataset
    ensembles: Model
    evaluation: Artifact
    best: Model
    uri: str


@dsl.pipeline(name="medens-classification",
              description="medens: multi-loss ensembles for imbalanced medical image classification")
def classification_pipeline(
    spec: str,
    store_uri: str = "",
    store_endpoint: str = _S.minio_endpoint,
    model_name: str = "",
    version: str = "",
    deploy_model: bool = False,
    namespace: str = _S.namespace,
) -> ExperimentOutputs:
    """Run one classification experiment.

    Args:
        spec: the experiment spec as YAML text (``ExperimentSpec.to_yaml()``).
        store_uri: where the winner is registered (default: the spec's ``store.uri``).
        store_endpoint: S3/MinIO endpoint of the store.
        model_name: registered and served name (default: the spec's name).
        version: registered version (default: the pipeline run id).
        deploy_model: create or patch the KServe InferenceService after registering.
        namespace: the InferenceService's (the chart owns it; a promotion rolls it over to the new version).
    """
    s = current()
    t = experiment_dag(spec, s, evaluate, store_uri=store_uri, store_endpoint=store_endpoint,
                       model_name=model_name)
    reg = register(spec=spec, best=t.evaluate.outputs["best"], store_uri=store_uri, store_endpoint=store_endpoint,
                   model_name=model_name, version=version, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    reg.after(t.predict)
    s.cpu_task(reg)
    s.store_access(reg)
    with dsl.If(deploy_model == True, name="deploy-requested"):  # noqa: E712 - a pipeline condition, not Python
        dep = deploy(name=reg.outputs["name"], namespace=namespace, version=reg.outputs["version"],
                     storage_uri=reg.outputs["uri"])
        s.cpu_task(dep)
    return ExperimentOutputs(dataset=t.preprocess.outputs["dataset"], ensembles=t.ensemble.outputs["ensembles"],
                             evaluation=t.evaluate.outputs["evaluation"], best=t.evaluate.outputs["best"],
                             uri=reg.outputs["uri"])
