"""Kubeflow components of medens: thin typed wrappers, one file per stage.

Each component imports medens inside its body and calls one medens function with the local
paths of its artifacts (docs/architecture.md section 7.7, "Components are thin typed wrappers"). The image is
``MEDENS_IMAGE`` at import time (see :mod:`components._image`).

==============  ======================================================================
fingerprint     spec (+ data URI) -> fingerprint of the data source now (never cached)
preprocess      spec + fingerprint -> Dataset (SplitData directory) + the training grid (JSON strings)
train           Dataset + one grid entry -> Model (artifact with val/test predictions)
ensemble        Dataset + members (collected) -> Model (a directory of ensemble artifacts)
evaluate        -> selection on validation, test Metrics, ClassificationMetrics, report, selected system
report          evaluation directory -> HTML and Markdown reports
predict         Model + Dataset -> predictions of a servable artifact on one split
gate            challenger Model vs the registered champion -> promote? (paired test; decision recorded)
register        best Model -> published to the ArtifactStore as a champion; returns its URI
deploy          URI -> KServe InferenceService created or patched
==============  ======================================================================
"""

from components._image import DEFAULT_IMAGE, IMAGE
from components.deploy import deploy
from components.ensemble import ensemble
from components.evaluate import evaluate, evaluate_segmentation
from components.fingerprint import fingerprint
from components.gate import gate
from components.predict import predict
from components.preprocess import preprocess
from components.register import register
from components.report import report
from components.train import train

ALL = (fingerprint, preprocess, train, ensemble, evaluate, evaluate_segmentation, report, predict, gate, register, deploy)

__all__ = ["ALL", "DEFAULT_IMAGE", "IMAGE", "deploy", "ensemble", "evaluate", "evaluate_segmentation", "fingerprint", "gate",
           "predict", "preprocess", "register", "report", "train"]
