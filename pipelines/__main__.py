"""``python -m pipelines run|compile|submit|schedule``.

- ``run --preset NAME [--out runs]``: the pipeline on this machine with kfp.local (see
  :mod:`pipelines.local`); prints a leaderboard and the command that serves the result.
- ``compile [--out pipelines/compiled]``: write ``classification.yaml``, ``segmentation.yaml``
  and ``retraining.yaml`` (checked in; a test fails when they are stale).
- ``submit --host URL --preset NAME``: compile and start one run on a Kubeflow Pipelines cluster.
- ``schedule --host URL --cron '0 0 2 * * *' --preset NAME``: a recurring retraining run.

Cluster settings (image, GPUs, node selector, toleration, resources, MinIO secret) come from
the ``MEDENS_*`` environment variables at compile time; see :mod:`pipelines.settings`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMPILED = Path(__file__).resolve().parent / "compiled"
DEFAULT_CRON = "0 0 2 * * *"


def _spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="packaged preset name (see `medens presets`)")
    g.add_argument("--spec", help="path to an experiment spec YAML file")
    p.add_argument("--epochs", type=int, help="override training.epochs")


def _load_spec(args: argparse.Namespace):
    from medens.config import load_spec

    spec = load_spec(args.preset or args.spec)
    if args.epochs is not None:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": args.epochs})})
    return spec


def compile_all(out: str | Path = COMPILED) -> list[Path]:
    """Compile every pipeline to ``out/<name>.yaml``; returns the files written."""
    from kfp import compiler

    from pipelines import PIPELINES

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in PIPELINES.items():
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(fn, str(path))
        written.append(path)
    return written


def kfp_client(host: str) -> Any:
    """The real ``kfp.Client`` (tests pass a recording fake instead)."""
    import kfp

    return kfp.Client(host=host)


def _pipeline_arguments(spec, args: argparse.Namespace, retraining: bool) -> dict[str, Any]:
    """Pipeline parameters: the spec as YAML plus only the options given on the command line."""
    params: dict[str, Any] = {"spec": spec.to_yaml()}
    for opt, key in (("store", "store_uri"), ("store_endpoint", "store_endpoint"), ("model_name", "model_name"),
                     ("namespace", "namespace"), ("serving_image", "serving_image"),
                     ("service_account", "service_account")):
        value = getattr(args, opt, None)
        if value:
            params[key] = value
    if retraining and getattr(args, "data_uri", None):
        params["data_uri"] = args.data_uri
    if getattr(args, "deploy", None) is not None:
        params["deploy_model"] = bool(args.deploy)
    return params


def _compiled_package(fn, tmp: str) -> str:
    from kfp import compiler

    path = str(Path(tmp) / f"{fn.name}.yaml")
    compiler.Compiler().compile(fn, path)
    return path


def submit(args: argparse.Namespace, client_factory: Callable[[str], Any] = kfp_client) -> Any:
    """Compile the pipeline for the spec and start one run on the cluster at ``args.host``."""
    from pipelines import pipeline_for

    spec = _load_spec(args)
    fn = pipeline_for(spec.task, args.pipeline)
    params = _pipeline_arguments(spec, args, retraining=fn.name == "medens-retraining")
    client = client_factory(args.host)
    with tempfile.TemporaryDirectory(prefix="medens-submit-") as tmp:
        result = client.create_run_from_pipeline_package(
            pipeline_file=_compiled_package(fn, tmp), arguments=params,
            run_name=args.run_name or f"{spec.name}-{fn.name.removeprefix('medens-')}",
            experiment_name=args.experiment, enable_caching=None)
    print(f"submitted {fn.name} for {spec.name!r} to {args.host}: run {getattr(result, 'run_id', result)}")
    return result


def check_cron(cron: str) -> str:
    """KFP cron expressions have six fields, seconds first (``0 0 2 * * *`` = 02:00 daily)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(f"--cron {cron!r} has {len(fields)} fields; Kubeflow Pipelines cron expressions have 6 "
                         f"(seconds first), e.g. {DEFAULT_CRON!r} for 02:00 every day")
    return " ".join(fields)


def schedule(args: argparse.Namespace, client_factory: Callable[[str], Any] = kfp_client) -> Any:
    """Create (or reuse) the experiment and a recurring retraining run with ``args.cron``."""
    from pipelines import retraining_pipeline

    cron = check_cron(args.cron)
    spec = _load_spec(args)
    params = _pipeline_arguments(spec, args, retraining=True)
    client = client_factory(args.host)
    experiment = client.create_experiment(name=args.experiment)
    job_name = args.job_name or f"{spec.name}-retraining"
    with tempfile.TemporaryDirectory(prefix="medens-schedule-") as tmp:
        result = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=job_name, cron_expression=cron,
            pipeline_package_path=_compiled_package(retraining_pipeline, tmp), params=params,
            max_concurrency=1, no_catchup=True, enabled=True)
    print(f"scheduled {job_name!r} ({cron}) in experiment {args.experiment!r} on {args.host}: "
          f"{getattr(result, 'recurring_run_id', result)}")
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.local import format_result, run_local

    spec = _load_spec(args)
    summary = run_local(spec, out=args.out, run_id=args.run_id, pipeline=args.pipeline, store_uri=args.store,
                        data_uri=args.data_uri or "", verbose=args.verbose)
    print(format_result(summary))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    submit(args)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    schedule(args)
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    for path in compile_all(args.out):
        print(f"wrote {path}")
    return 0


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    _spec_args(p)
    p.add_argument("--store", help="model repository URI (default: the spec's store.uri), e.g. s3://medens/models")
    p.add_argument("--store-endpoint", help="S3/MinIO endpoint (default: MEDENS_MINIO_ENDPOINT at compile time)")
    p.add_argument("--model-name", help="registered and served name (default: the spec's name)")
    p.add_argument("--namespace", help="namespace of the InferenceService")
    p.add_argument("--serving-image", help="image of the InferenceService (default: MEDENS_IMAGE)")
    p.add_argument("--service-account", help="service account of the InferenceService (S3 access)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description="medens Kubeflow pipelines")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a pipeline on this machine with kfp.local")
    _spec_args(r)
    r.add_argument("--out", default="runs", help="runs folder; the run goes to OUT/<run-id>, OUT/latest links it")
    r.add_argument("--run-id", help="default <spec name>-<YYYYmmdd-HHMMSS>")
    r.add_argument("--pipeline", default="auto", choices=["auto", "classification", "segmentation", "retraining"])
    r.add_argument("--store", help="model repository (default OUT/<run-id>/registry)")
    r.add_argument("--data-uri", help="new data for the retraining pipeline")
    r.add_argument("--verbose", action="store_true", help="show kfp.local's full output")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile every pipeline to YAML")
    c.add_argument("--out", default=str(COMPILED), help="output folder (default pipelines/compiled)")
    c.set_defaults(func=cmd_compile)

    s = sub.add_parser("submit", help="compile and start one run on a Kubeflow Pipelines cluster")
    _cluster_args(s)
    s.add_argument("--pipeline", default="auto", choices=["auto", "classification", "segmentation", "retraining"])
    s.add_argument("--experiment", default="medens", help="KFP experiment name")
    s.add_argument("--run-name", help="default <spec name>-<pipeline>")
    s.add_argument("--data-uri", help="new data (retraining pipeline)")
    s.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=None,
                   help="deploy the registered model to KServe (default: the pipeline's)")
    s.set_defaults(func=cmd_submit)

    sc = sub.add_parser("schedule", help="schedule the retraining pipeline with a cron expression")
    _cluster_args(sc)
    sc.add_argument("--cron", default=DEFAULT_CRON, help=f"6-field cron, seconds first (default {DEFAULT_CRON!r})")
    sc.add_argument("--experiment", default="medens-retraining", help="KFP experiment name")
    sc.add_argument("--job-name", help="default <spec name>-retraining")
    sc.add_argument("--data-uri", help="where new data lands, e.g. s3://medens/incoming/rbc")
    sc.add_argument("--deploy", action=argparse.BooleanOptionalAction, default=None,
                    help="deploy a promoted challenger (default: yes)")
    sc.set_defaults(func=cmd_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"pipelines: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"pipelines: {args.command} failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
