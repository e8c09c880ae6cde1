"""Training stage: one task per (model, loss) pair of the grid."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train(spec: str, dataset: Input[Dataset], member: str, model: Output[Model]):
    """Train one member and save its artifact with validation and test predictions.

    Args:
        spec: the experiment spec as YAML text.
        dataset: the dataset directory from ``preprocess``.
        member: one grid entry, JSON ``{"id", "model", "loss", "train_on"}``.
        model: the model artifact directory (``weights.pt``, ``model.json``, ``predictions/``).
    """
    import json

    from medens.stages import spec_from_text, train_member

    path = train_member(spec_from_text(spec), dataset.path, member, model.path)
    manifest = json.loads((path / "model.json").read_text())
    model.metadata.update({"member_id": manifest["member_id"], "best_epoch": manifest["best_epoch"],
                           **{k: v for k, v in manifest["val_metrics"].items() if isinstance(v, int | float)}})
    print(f"{manifest['member_id']}: best epoch {manifest['best_epoch']}, validation {manifest['val_metrics']}")
