"""The part every experiment pipeline shares: data, the training loop, ensembles, evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl

from components import ensemble, fingerprint, predict, preprocess, report, train
from pipelines.settings import ClusterSettings


@dataclass
class ExperimentTasks:
    """The tasks :func:`experiment_dag` adds, for the pipeline around it to wire further."""

    fingerprint: dsl.PipelineTask
    preprocess: dsl.PipelineTask
    ensemble: dsl.PipelineTask
    evaluate: dsl.PipelineTask
    report: dsl.PipelineTask
    predict: dsl.PipelineTask


def experiment_dag(spec: str, settings: ClusterSettings, evaluate_component, *, data_uri: str = "",
                   store_uri: str = "", store_endpoint: str = "", model_name: str = "") -> ExperimentTasks:
    """fingerprint -> preprocess -> ParallelFor(train) -> ensemble -> evaluate -> report, and predict with the selection.

    The training grid comes from the spec at run time (``preprocess`` returns it), so one
    compiled pipeline serves every spec; each grid entry is its own train task on a GPU node.
    ``dsl.Collected`` hands all trained members to the ensemble and evaluation tasks.
    A train task publishes its checkpoint to ``<store_uri>/<model_name>/checkpoints/<run id>/<member
    id>`` as it trains (hence the store credentials), so a retry of the task in the same run
    resumes there, while a new run starts afresh.
    """
    # The data source's fingerprint is computed afresh every run (never cached) and is an input
    # of preprocess, so preprocess's cache key changes whenever the data at data_uri does: a cached
    # dataset is reused only for the same data (a scheduled retraining run sees what is there now).
    fp = fingerprint(spec=spec, data_uri=data_uri, store_endpoint=store_endpoint)
    settings.cpu_task(fp, cache=False, name="fingerprint data")
    settings.store_access(fp)
    prep = preprocess(spec=spec, data_uri=data_uri, store_endpoint=store_endpoint,
                      source_fingerprint=fp.output)
    settings.cpu_task(prep, cache=True, name="preprocess")
    settings.store_access(prep)
    dataset = prep.outputs["dataset"]
    with dsl.ParallelFor(prep.outputs["Output"], name="members") as member:
        tr = train(spec=spec, dataset=dataset, member=member, store_uri=store_uri, store_endpoint=store_endpoint,
                   model_name=model_name, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        settings.gpu_task(tr, settings.train_gpus, retries=True, name="train (model, loss)")
        settings.store_access(tr)
    ens = ensemble(spec=spec, dataset=dataset, members=dsl.Collected(tr.outputs["model"]))
    settings.gpu_task(ens, settings.ensemble_gpus)
    ev = evaluate_component(spec=spec, dataset=dataset, members=dsl.Collected(tr.outputs["model"]),
                            ensembles=ens.outputs["ensembles"])
    settings.cpu_task(ev)
    rep = report(evaluation=ev.outputs["evaluation"])
    settings.cpu_task(rep)
    pred = predict(model=ev.outputs["best"], dataset=dataset, split="test")
    settings.cpu_task(pred, name="predict (best, test)")
    return ExperimentTasks(fp, prep, ens, ev, rep, pred)
