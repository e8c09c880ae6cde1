"""The segmentation experiment (study 3): main and sampling-method models and their ensembles.

The training grid holds every (model, loss) pair trained on the images and, with
``data.sampling_method``, a sampling-method model per architecture trained on the lesion-centred
crops (Roshan et al. 2024). The ensemble task fits the spec's ``seg_methods`` (weighted: Dice-
searched weights, study 3's 1.01/1.0 included; majority; intersection) on validation; evaluation
ranks by Dice with paired per-image tests; the winner is registered and optionally deployed.
"""


from kfp import dsl

from components import deploy, evaluate_segmentation, register
from pipelines._experiment import experiment_dag
from pipelines.classification import ExperimentOutputs
from pipelines.settings import current

_S = current()


@dsl.pipeline(name="medens-segmentation",
              description="medens: study 3 segmentation ensembles (main and sampling-method U-Nets)")
def segmentation_pipeline(
    spec: str,
    store_uri: str = "",
    store_endpoint: str = _S.minio_endpoint,
    model_name: str = "",
    version: str = "",
    deploy_model: bool = False,
    namespace: str = _S.namespace,
) -> ExperimentOutputs:
    """Run one segmentation experiment; the parameters are those of the classification pipeline."""
    s = current()
    t = experiment_dag(spec, s, evaluate_segmentation, store_uri=store_uri, store_endpoint=store_endpoint,
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
