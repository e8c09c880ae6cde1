"""Ensemble stage: prediction-level ensembles (and the model-level one) from the members."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def ensemble(spec: str, dataset: Input[Dataset], members: Input[list[Model]], ensembles: Output[Model]):
    """Fit every ensemble of the spec on the members' validation predictions.

    Args:
        spec: the experiment spec as YAML text.
        dataset: the dataset directory (the model-level ensemble trains on it).
        members: the trained members (``dsl.Collected`` over the training loop).
        ensembles: a directory holding one ensemble artifact per ensemble, ``<name>/ensemble.json``.
    """
    from medens.stages import build_ensembles, spec_from_text

    made = build_ensembles(spec_from_text(spec), dataset.path, [m.path for m in members], ensembles.path)
    ensembles.metadata["ensembles"] = sorted(made)
    print(f"ensembles: {', '.join(sorted(made)) or 'none'}")
