"""Training: the engine (``fit``), predictions, device selection and k-fold search."""

from medens.training.engine import FitResult, fit, predict_split
from medens.training.predictions import Predictions

__all__ = ["FitResult", "Predictions", "fit", "predict_split"]
