"""``python -m pipelines run|compile|submit|schedule``.

- ``run --preset NAME [--out runs]``: the pipeline on this machine with kfp.local (see
  :mod:`pipelines.local`); prints a leaderboard and the command that serves the result.
- ``compile [--out pipelines/compiled]``: write ``classification.yaml``, ``segmentation.yaml``
  and ``retraining.yaml`` (checked in; a test fails when they are stale).
- ``submit --host URL --preset NAME``: compile and start one run on a Kubeflow Pipelines cluster.
- ``schedule --host URL --cron '0 0 2 * * *' --preset NAME [--job-name N] [--namespace NS]``: create or
  update the recurring retraining run named N (default ``<spec name>-retraining``): the new one is
  created, then every other one of that name in the experiment is deleted.
- ``unschedule --host URL --job-name N [--experiment E] [--namespace NS]``: delete it (nothing to
  delete is success).

Both authenticate with the token file named by ``KF_PIPELINES_SA_TOKEN_PATH`` when it is set, and
exit 1 with a message naming the host and the HTTP status when the API refuses.

Cluster settings (image, GPUs, node selector, toleration, resources, MinIO secret) come from
the ``MEDENS_*`` environment variables at compile time; see :mod:`pipelines.settings`.
"""

from __future__ import annotations

import argparse
import json
import os
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


def kfp_client(host: str, namespace: str | None = None) -> Any:
    """The real ``kfp.Client`` for ``host``, authenticated when ``KF_PIPELINES_SA_TOKEN_PATH`` is set.

    Given a host, kfp 2.17's client reads no token by itself (it falls back to the projected
    service-account token only in-cluster without a host), so the token file is passed as
    ``ServiceAccountTokenVolumeCredentials``: it is re-read before every request (the kubelet
    rotates it) and sent as ``Authorization: Bearer <token>``, which multi-user Kubeflow requires.
    """
    import kfp
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    credentials = None
    token_path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV, "").strip()
    if token_path:
        if not Path(token_path).is_file():
            raise RuntimeError(f"{KF_PIPELINES_SA_TOKEN_ENV}={token_path} is not a file: is the projected "
                               "service-account token (audience pipelines.kubeflow.org) mounted?")
        credentials = ServiceAccountTokenVolumeCredentials(token_path)
    try:
        return kfp.Client(host=host, credentials=credentials, **({"namespace": namespace} if namespace else {}))
    except TimeoutError as e:  # the client's health check, made only when it knows no namespace
        raise RuntimeError(f"cannot reach the Kubeflow Pipelines API at {host}: {e}") from e


def _pipeline_arguments(spec, args: argparse.Namespace, retraining: bool) -> dict[str, Any]:
    """Pipeline parameters: the spec as YAML plus only the options given on the command line."""
    params: dict[str, Any] = {"spec": spec.to_yaml()}
    for opt, key in (("store", "store_uri"), ("store_endpoint", "store_endpoint"), ("model_name", "model_name"),
                     ("namespace", "namespace")):
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


def _refusal(host: str, what: str, e: Any) -> str:
    """The message for an ``ApiException``: host, action, HTTP status, the server's words, a hint."""
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV

    body = e.body.decode(errors="replace") if isinstance(e.body, bytes) else (e.body or "")
    try:
        detail = json.loads(body).get("message") or body
    except (ValueError, AttributeError):
        detail = body
    msg = f"the Kubeflow Pipelines API at {host} refused to {what}: HTTP {e.status} {e.reason or ''}".rstrip()
    if detail:
        msg += f": {detail.strip()[:500]}"
    if e.status == 401:
        token = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV)
        msg += (f" (the token in {token} was not accepted" if token else
                f" (no token was sent: set {KF_PIPELINES_SA_TOKEN_ENV} to a projected service-account token")
        msg += "; its audience must be pipelines.kubeflow.org)"
    elif e.status == 403:
        msg += (" (in multi-user Kubeflow the service account needs a RoleBinding to the ClusterRole "
                "kubeflow-edit in the profile's namespace)")
    return msg


def _api(host: str, what: str, call: Callable[..., Any], /, **kwargs: Any) -> Any:
    """``call(**kwargs)`` with the API's refusals and unreachable hosts as ``RuntimeError``."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        return call(**kwargs)
    except ApiException as e:
        raise RuntimeError(_refusal(host, what, e)) from e
    except urllib3.exceptions.HTTPError as e:
        raise RuntimeError(f"cannot reach the Kubeflow Pipelines API at {host} to {what}: {e}") from e


def find_recurring_runs(client: Any, host: str, experiment_id: str, name: str) -> list[Any]:
    """Every recurring run of the experiment whose display name is ``name`` (all pages)."""
    name_filter = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found, token = [], ""
    while True:
        page = _api(host, f"list the recurring runs named {name!r}", client.list_recurring_runs,
                    experiment_id=experiment_id, filter=name_filter, page_size=100, page_token=token)
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def _package_facts(package: str) -> tuple[set[str], set[str]]:
    """The executor images and the root parameters of a compiled pipeline package."""
    import yaml

    with open(package) as f:
        spec = next(yaml.safe_load_all(f))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}
    return images, set(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def _job_name(args: argparse.Namespace) -> str:
    return args.job_name or f"{_load_spec(args).name}-retraining"


def schedule(args: argparse.Namespace, client_factory: Callable[..., Any] = kfp_client) -> Any:
    """Create or update the recurring retraining run ``args.job_name`` in ``args.experiment``.

    KFP cannot update a recurring run, so this creates the new one and then deletes every other
    recurring run of that name in the experiment: run again with the same arguments, it leaves
    exactly one; refused, it leaves the previous one running (and exits non-zero).
    """
    from components._image import image_from_env
    from pipelines import retraining_pipeline

    cron = check_cron(args.cron)
    spec = _load_spec(args)
    params = _pipeline_arguments(spec, args, retraining=True)
    job_name = args.job_name or f"{spec.name}-retraining"
    host, namespace = args.host, args.namespace
    client = client_factory(host, namespace)
    experiment = _api(host, f"create or find the experiment {args.experiment!r}", client.create_experiment,
                      name=args.experiment, namespace=namespace)
    previous = find_recurring_runs(client, host, experiment.experiment_id, job_name)
    with tempfile.TemporaryDirectory(prefix="medens-schedule-") as tmp:
        package = _compiled_package(retraining_pipeline, tmp)
        images, declared = _package_facts(package)
        if images != {image_from_env()}:  # components read MEDENS_IMAGE when first imported
            raise RuntimeError(f"the retraining pipeline was compiled with the images {sorted(images)}, not MEDENS_IMAGE "
                               f"{image_from_env()!r}: set MEDENS_IMAGE before the process starts")
        for key in sorted(set(params) - declared):  # KFP would pass them to no task
            print(f"note: the retraining pipeline has no parameter {key!r}; {params.pop(key)!r} is not passed",
                  file=sys.stderr)
        result = _api(host, f"create the recurring run {job_name!r}", client.create_recurring_run,
                      experiment_id=experiment.experiment_id, job_name=job_name, cron_expression=cron,
                      pipeline_package_path=package, params=params, max_concurrency=1, no_catchup=True,
                      enabled=True)
    print(f"created recurring run {job_name!r} ({result.recurring_run_id}): cron {cron!r}, image {image_from_env()}, "
          f"experiment {args.experiment!r} ({experiment.experiment_id}), namespace {namespace or '(default)'}, "
          f"store endpoint {params.get('store_endpoint', '(the pipeline default)')}")
    for old in previous:
        _api(host, f"delete the previous recurring run {job_name!r} ({old.recurring_run_id})",
             client.delete_recurring_run, recurring_run_id=old.recurring_run_id)
        print(f"deleted the previous recurring run {job_name!r} ({old.recurring_run_id})")
    print(f"scheduled {job_name!r} ({cron}) in experiment {args.experiment!r} on {host}: {result.recurring_run_id}")
    return result


def unschedule(args: argparse.Namespace, client_factory: Callable[..., Any] = kfp_client) -> list[str]:
    """Delete every recurring run named ``args.job_name`` in ``args.experiment``; returns their ids.

    Nothing to delete (no such run, no such experiment) is success: the command is idempotent.
    """
    job_name = _job_name(args)
    host, namespace = args.host, args.namespace
    client = client_factory(host, namespace)
    try:
        experiment = _api(host, f"find the experiment {args.experiment!r}", client.get_experiment,
                          experiment_name=args.experiment, namespace=namespace)
    except ValueError as e:
        if not str(e).startswith("No experiment is found"):
            raise
        print(f"no experiment {args.experiment!r} on {host}: no recurring run {job_name!r} to delete")
        return []
    deleted = []
    for run in find_recurring_runs(client, host, experiment.experiment_id, job_name):
        _api(host, f"delete the recurring run {job_name!r} ({run.recurring_run_id})",
             client.delete_recurring_run, recurring_run_id=run.recurring_run_id)
        print(f"deleted recurring run {job_name!r} ({run.recurring_run_id}) from experiment {args.experiment!r}")
        deleted.append(run.recurring_run_id)
    if not deleted:
        print(f"no recurring run {job_name!r} in experiment {args.experiment!r} on {host}: nothing to delete")
    return deleted


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


def cmd_unschedule(args: argparse.Namespace) -> int:
    unschedule(args)
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
    p.add_argument("--namespace", help="namespace of the InferenceService and, in multi-user Kubeflow, of the "
                                       "experiment (the profile's namespace)")


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

    u = sub.add_parser("unschedule", help="delete the recurring retraining run (idempotent)")
    u.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080")
    g = u.add_mutually_exclusive_group(required=True)
    g.add_argument("--job-name", help="display name of the recurring run")
    g.add_argument("--preset", help="the name is <preset's spec name>-retraining")
    g.add_argument("--spec", help="the name is <spec name>-retraining")
    u.add_argument("--experiment", default="medens-retraining", help="KFP experiment name")
    u.add_argument("--namespace", help="the experiment's namespace (multi-user Kubeflow)")
    u.set_defaults(func=cmd_unschedule, epochs=None)
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
