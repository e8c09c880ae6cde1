"""Prediction stage: a servable (ensemble) artifact on one split of a dataset."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def predict(model: Input[Model], dataset: Input[Dataset], predictions: Output[Dataset], split: str = "test"):
    """Run ``model`` (an ensemble or model artifact) on ``split`` as serving would.

    Args:
        model: the artifact; its own input spec preprocesses the images.
        dataset: the dataset directory.
        predictions: a directory with ``<split>.npz`` (probs, ids, labels or masks).
        split: train, val or test.
    """
    import os

    from medens.evaluation.gate import ensemble_predictions

    preds = ensemble_predictions(model.path, dataset.path, split)
    preds.save(os.path.join(predictions.path, f"{split}.npz"))
    predictions.metadata.update({"split": split, "n": len(preds.ids)})
    print(f"{len(preds.ids)} {split} predictions of {model.metadata.get('system', model.path)}")
