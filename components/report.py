"""Report stage: the HTML and Markdown reports as KFP artifacts (rendered in the KFP UI)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def report(evaluation: Input[Artifact], html: Output[HTML], markdown: Output[Markdown]):
    """Publish ``report.html`` (self-contained, figures embedded) and ``report.md``; print the leaderboard.

    Args:
        evaluation: the evaluation directory from ``evaluate``.
        html: the HTML report.
        markdown: the Markdown report.
    """
    from medens.stages import export_report

    print(export_report(evaluation.path, html.path, markdown.path))
