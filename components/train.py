"""Training stage: one task per (model, loss) pair of the grid."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train(spec: str, dataset: Input[Dataset], member: str, model: Output[Model], store_uri: str = "",
          store_endpoint: str = "", model_name: str = "", run_id: str = "", checkpoint_uri: str = "",
          checkpoint_every: str = ""):
    """Train one member and save its artifact with validation and test predictions.

    A killed pod never uploads ``model``, so the checkpoint is also published to the store as
    training runs, and a retry of this task (same run) resumes from it.

    Args:
        spec: the experiment spec as YAML text.
        dataset: the dataset directory from ``preprocess``.
        member: one grid entry, JSON ``{"id", "model", "loss", "train_on"}``.
        model: the model artifact directory (``weights.pt``, ``model.json``, ``predictions/``).
        store_uri: a local directory or ``s3://bucket/prefix`` (default: the spec's ``store.uri``).
        store_endpoint: S3 endpoint (default: the spec's, then ``MINIO_ENDPOINT``).
        model_name: the registered name (default: the spec's name).
        run_id: the pipeline run's id (the pipelines pass ``dsl.PIPELINE_JOB_ID_PLACEHOLDER``);
            checkpoints go to ``<store_uri>/<model_name>/checkpoints/<run_id>/<member id>``.
        checkpoint_uri: another checkpoint folder of the run (overrides the above); with neither
            this nor ``run_id`` only the local checkpoint is written.
        checkpoint_every: publish every ``N`` epochs or ``Ms`` seconds (default: every epoch).
    """
    from medens.stages import spec_from_text, train_member
    from medens.stages.results import MemberResult
    from medens.stages.train import checkpoint_location

    s = spec_from_text(spec)
    uri = checkpoint_location(s, checkpoint_uri=checkpoint_uri, store_uri=store_uri, model_name=model_name,
                              run_id=run_id)
    path = train_member(s, dataset.path, member, model.path, checkpoint_uri=uri, store_endpoint=store_endpoint,
                        checkpoint_every=checkpoint_every)
    result = MemberResult.load(path)
    model.metadata.update({"member_id": result.member_id, "best_epoch": result.best_epoch,
                           **{k: v for k, v in result.val_metrics.items() if isinstance(v, int | float)}})
    print(f"{result.member_id}: best epoch {result.best_epoch}, validation {result.val_metrics}")
