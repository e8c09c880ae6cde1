"""The ``medens`` command. Every sub-command loads a preset by name or a spec by path.

Errors that come from bad input (``ValueError``) print one clear message and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medens import __version__

if TYPE_CHECKING:
    from medens.stages.results import EvaluationSummary


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="packaged preset name (see `medens presets`)")
    g.add_argument("--spec", help="path to an experiment spec YAML file")


def _load(args: argparse.Namespace):
    from medens.config import load_spec

    return load_spec(args.preset or args.spec)


def format_summary(summary: dict, where: str | None = None) -> str:
    """Human-readable dataset summary: class counts per split, rho, sizes, output folder."""
    lines = []
    info = summary.get("info", {})
    lines.append(f"task: {summary['task']}   source: {info.get('source', '?')}   "
                 f"images: {summary['image_size'][0]}x{summary['image_size'][1]}x{summary['channels']}")
    names = summary["class_names"]
    splits = summary["splits"]
    if summary["task"] == "classification":
        width = max(len(n) for n in [*names, "class"]) + 2
        header = "class".ljust(width) + "".join(s.rjust(9) for s in splits)
        lines.append(header)
        for c in names:
            lines.append(c.ljust(width) + "".join(str(splits[s].get("class_counts", {}).get(c, "")).rjust(9)
                                                  for s in splits))
        lines.append("total".ljust(width) + "".join(str(splits[s]["n"]).rjust(9) for s in splits))
        rho = [splits[s].get("rho") for s in splits]
        lines.append("rho".ljust(width) + "".join((f"{r:.2f}" if r is not None else "-").rjust(9) for r in rho))
    else:
        for s, e in splits.items():
            frac = e.get("pixel_fraction")
            extra = f"   lesion pixels {100 * frac[names[-1]]:.2f}%   images with lesion {e['images_with_lesion']}" if frac else ""
            lines.append(f"{s:>12}: {e['n']} images{extra}")
    lines += _unit_lines(info)
    if where:
        lines.append(f"written to: {where}")
    return "\n".join(lines)


def _unit_lines(info: dict) -> list[str]:
    """The split unit (images, or groups per split) and what the duplicate check found."""
    unit, dup, lines = info.get("split_unit"), info.get("duplicates"), []
    if isinstance(unit, dict):
        per = ", ".join(f"{s} {unit['groups'][s]} groups" for s in ("train", "val", "test") if s in unit["groups"])
        lines.append(f"split unit: patients/groups (data.group_by {unit['group_by']}): {per}")
    elif unit:
        lines.append(f"split unit: {unit} (data.group_by not set: one patient's images may be in several splits)")
    if dup:
        within = sum(dup["within_splits"].values())
        found = (f"{dup['across_splits']} image(s) in two splits, allowed by data.allow_duplicates"
                 if dup["across_splits"] else "no image in two splits")
        lines.append(f"duplicates: {found} ({dup['checked']})" + (f"; {within} extra copies inside a split"
                                                                   if within else ""))
    return lines


def cmd_data_summary(args: argparse.Namespace) -> int:
    from medens.data import build_dataset

    spec = _load(args)
    data = build_dataset(spec)
    out = Path(args.out) if args.out else Path("runs") / "data" / spec.name
    data.save(out)
    summary = data.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"experiment {spec.name}: {spec.description}".rstrip(": "))
        print(format_summary(summary, str(out.resolve())))
    return 0


def _parse_counts(text: str | None) -> dict[str, int] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--counts must look like codocyte=100,hypochromia=100,normal=800; got {item!r}")
        out[name.strip()] = int(value)
    return out


def cmd_make_synthetic(args: argparse.Namespace) -> int:
    from medens.data.export import write_synthetic

    out = write_synthetic(args.kind, args.out, n=args.n, size=args.size, seed=args.seed,
                          counts=_parse_counts(args.counts))
    print(f"wrote {out['n_files']} files to {Path(args.out).resolve()} ({out['layout']})")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """The packaged recipes (``recipe: NAME`` in a spec), or the fields one of them sets."""
    import yaml

    from medens.config import load_recipe, recipe_names

    if args.name:
        recipe = load_recipe(args.name)
        print(f"# recipe {args.name}: {recipe.get('description', '')}")
        print("# a spec with `recipe: " + args.name + "` gets these fields unless it sets them itself")
        print(yaml.safe_dump({k: v for k, v in recipe.items() if k != "description"}, sort_keys=False), end="")
        return 0
    for name in recipe_names():
        recipe = load_recipe(name)
        sections = ", ".join(f"{s} ({len(recipe[s])} fields)" for s in recipe if s != "description")
        print(f"{name:16} {recipe.get('description', '')}\n{'':16} sets {sections}; `medens recipes {name}` shows them")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from medens.config import load_spec, preset_names

    for name in preset_names():
        spec = load_spec(name)
        print(f"{name:16} {spec.task:15} {spec.description}")
    return 0


def _pick(components, wanted: str | None, what: str):
    """A model/loss of the spec by name or key; a name not in the spec is used with no params."""
    from medens.config import ComponentSpec

    if wanted is None:
        return components[0]
    for c in components:
        if wanted in (c.key, c.name):
            return c
    return ComponentSpec(name=wanted)


def _dataset(args: argparse.Namespace, spec):
    from medens.data import SplitData, build_dataset

    return SplitData.load(args.data) if getattr(args, "data", None) else build_dataset(spec)


def cmd_train(args: argparse.Namespace) -> int:
    from medens.training import fit
    from medens.training.engine import describe_run

    spec = _load(args)
    model, loss = _pick(spec.models, args.model, "model"), _pick(spec.losses, args.loss, "loss")
    training = model.training_for(spec.training) if hasattr(model, "training_for") else spec.training
    if args.epochs is not None:
        training = training.model_copy(update={"epochs": args.epochs})
    data = _dataset(args, spec)
    out = Path(args.out) if args.out else Path("runs") / spec.name / "members" / f"{model.key}__{loss.key}"
    store = None
    if args.checkpoint_uri:  # published as training runs; a rerun with an empty --out resumes from it
        from medens.stages.data import SAMPLING_SUFFIX, member_id
        from medens.training.checkpoints import StoreCheckpoints, parse_frequency

        every_epochs, every_seconds = parse_frequency(args.checkpoint_every)
        name = member_id(model, loss) + (SAMPLING_SUFFIX if args.train_on == "train_crops" else "")
        store = StoreCheckpoints(args.checkpoint_uri, name, endpoint=spec.store.endpoint,
                                 every_epochs=every_epochs, every_seconds=every_seconds)
    res = fit(model, loss, data, training, out, seed=spec.seed, resume=args.resume or store is not None,
              normalize=spec.data.normalize, train_on=args.train_on, checkpoint_store=store)
    print(json.dumps(describe_run(res), indent=2))
    if res.collapse and res.collapse.get("collapsed"):
        from medens.training.collapse import collapse_warning

        print(collapse_warning(f"{model.key}__{loss.key}", res.collapse), file=sys.stderr)
    return 0


def _parse_grid(items: list[str]) -> dict[str, list]:
    import yaml

    grid = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid must look like loss.alpha=0.25,0.5,1.0; got {item!r}")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def cmd_search(args: argparse.Namespace) -> int:
    from medens.training.search import STUDY2_FOCAL_GRID, search

    spec = _load(args)
    model, loss = _pick(spec.models, args.model, "model"), _pick(spec.losses, args.loss or "focal", "loss")
    training = model.training_for(spec.training) if hasattr(model, "training_for") else spec.training
    if args.epochs is not None:
        training = training.model_copy(update={"epochs": args.epochs})
    data = _dataset(args, spec)
    grid = _parse_grid(args.grid) if args.grid else STUDY2_FOCAL_GRID
    out = Path(args.out) if args.out else Path("runs") / spec.name / "search"
    res = search(model, loss, data, grid, training, out, k=args.folds, metric=args.metric, seed=spec.seed)
    print(res.markdown_path.read_text())
    print(f"best: {res.best}   (table: {res.markdown_path}, folds: {res.csv_path})")
    if args.write_spec:
        from medens.training.search import spec_with_setting

        path = spec_with_setting(spec, model, loss, res.best).save(args.write_spec)
        print(f"spec with the best setting: {path}   (medens run --spec {path})")
    return 0


def print_leaderboard(summary: EvaluationSummary, limit: int = 12) -> None:
    from medens.stages import leaderboard_text

    print(leaderboard_text(summary, limit))


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from medens.stages import run_experiment

    spec = _load(args)
    if args.epochs is not None:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": args.epochs})})
    run = Path(args.out) if args.out else Path(spec.store.uri) / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary = run_experiment(spec, run)
    print()
    print_leaderboard(summary)
    print(f"\nselected: {summary.selected} ({summary.selection_rule})")
    for name, cls in summary.collapsed.items():
        print(f"WARNING: {name} has collapsed: it predicts only class {cls!r} on validation")
    if summary.quality == "failed":
        print(f"RUN FAILED ON QUALITY: {summary.quality_reason}")
    for name, reason in summary.skipped.items():
        print(f"skipped: {name}: {reason}")
    print(f"report: {summary.report}   registered: {summary.uri}   ({summary.seconds} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medens.config import load_spec
    from medens.stages import evaluate_systems

    run = Path(args.run)
    if not (run / "spec.yaml").is_file():
        raise ValueError(f"{run} is not a medens run directory: spec.yaml is missing")
    spec = load_spec(str(run / "spec.yaml"))
    members = ([p for p in sorted((run / "members").iterdir()) if (p / "model.json").is_file()]
               if (run / "members").is_dir() else [])
    if not members:
        raise ValueError(f"{run} has no trained members under members/")
    out = Path(args.out) if args.out else run / "evaluation"
    summary = evaluate_systems(spec, run / "data", members, run / "ensembles", out)
    print_leaderboard(summary)
    print(f"\nselected: {summary.selected}   report: {out / summary.report}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medens.serving.server import serve
    from medens.serving.settings import ServingSettings

    settings = ServingSettings.from_env(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                        forward_workers=args.forward_workers,
                                        max_instances=args.max_instances, max_bytes=args.max_bytes,
                                        max_pixels=args.max_pixels, max_request_pixels=args.max_request_pixels)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    serve(args.model_dir, name=args.model_name, http_port=args.http_port, grpc_port=args.grpc_port, settings=settings,
          device=args.device, endpoint=args.endpoint, backend=args.backend, threads=args.threads)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from medens.serving.check import ProbeError, probe

    try:
        r = probe(args.url, args.model, timeout=args.timeout)
    except (ProbeError, OSError) as e:
        print(f"probe FAILED: {args.url} model {args.model}: {e}")
        return 1
    print(f"probe ok: {r['url']} model {r['model']}: {r['class_name']} "
          f"(probabilities sum to 1 within 1e-4, {r['shape'][0]}x{r['shape'][1]}x{r['shape'][2]} image, {r['seconds']} s)")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from medens.stages.init import format_init, init_experiment

    result = init_experiment(args.path, task=args.task, out=args.out, image_size=args.size,
                             timing_steps=args.timing_steps, force=args.force)
    print(format_init(result))
    return 0


def cmd_losses_list(args: argparse.Namespace) -> int:
    from medens.losses import format_table

    print(format_table(task=args.task, fmt=args.format))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from medens.models.weights import format_pretrained_table

    print(format_pretrained_table(task=args.task, fmt=args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``medens`` command line: one function adds each group of subcommands."""
    parser = argparse.ArgumentParser(prog="medens", description="Medical image ensembles on imbalanced data.")
    parser.add_argument("--version", action="version", version=f"medens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_setup_commands, _add_data_commands, _add_training_commands, _add_experiment_commands,
                _add_serving_commands, _add_library_commands):
        add(sub)
    return parser


def _add_setup_commands(sub: Any) -> None:
    """``presets``, ``recipes``, ``init``."""
    sub.add_parser("presets", help="list the packaged presets").set_defaults(func=cmd_presets)
    rc = sub.add_parser("recipes", help="list the packaged recipes (`recipe: NAME` in a spec), or show one")
    rc.add_argument("name", nargs="?", help="a recipe to show field by field")
    rc.set_defaults(func=cmd_recipes)
    ini = sub.add_parser("init", help="look at a folder of images (or a CSV manifest) and write a commented spec "
                                      "that runs the imbalanced-2d recipe on it, with a time estimate")
    ini.add_argument("path", help="an image folder (one sub-folder per class, optionally under train/ val/ test/), "
                                  "a segmentation folder (images/ + masks/) or a CSV manifest")
    ini.add_argument("--task", choices=["classification", "segmentation"], help="default: from the layout")
    ini.add_argument("--out", default="spec.yaml", help="the spec to write (default spec.yaml)")
    ini.add_argument("--size", type=int, help="data.image_size (default: from the images' sizes)")
    ini.add_argument("--timing-steps", type=int, default=3, help="training steps timed per model for the "
                                                                 "estimate (0: no estimate)")
    ini.add_argument("--force", action="store_true", help="replace --out when it exists")
    ini.set_defaults(func=cmd_init)


def _add_data_commands(sub: Any) -> None:
    """``data summary``, ``data make-synthetic``."""
    data = sub.add_parser("data", help="data stage: summaries and synthetic data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("summary", help="run the data stage of a spec and print a summary")
    _add_spec_args(s)
    s.add_argument("--out", help="where to write the split arrays (default runs/data/<name>)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_data_summary)
    m = dsub.add_parser("make-synthetic", help="write synthetic data as an image-folder layout")
    m.add_argument("--kind", choices=["cells", "smears", "segmentation"], required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--n", type=int, default=None, help="smears or scans to write (cells: see --counts)")
    m.add_argument("--size", type=int, default=None, help="crop, smear or scan side in pixels")
    m.add_argument("--counts", help="cells per class, e.g. codocyte=100,hypochromia=100,normal=800")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_make_synthetic)


def _add_training_commands(sub: Any) -> None:
    """``train`` (one member), ``search`` (cross-validated grid search)."""
    t = sub.add_parser("train", help="train one (model, loss) pair into a model artifact")
    _add_spec_args(t)
    t.add_argument("--model", help="model name or key from the spec (default: the spec's first)")
    t.add_argument("--loss", help="loss name or key from the spec (default: the spec's first)")
    t.add_argument("--out", help="artifact directory (default runs/<name>/members/<model>__<loss>)")
    t.add_argument("--data", help="a dataset directory written by `medens data summary --out` (skips the data stage)")
    t.add_argument("--epochs", type=int, help="override training.epochs")
    t.add_argument("--train-on", default="train", help="train, or train_crops (study 3 sampling method)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--checkpoint-uri", help="also publish the checkpoint to <URI>/<model>__<loss> (a folder or "
                   "s3://bucket/prefix) and resume from there when --out has none (implies --resume)")
    t.add_argument("--checkpoint-every", help="publish every N epochs (e.g. 2) or seconds (e.g. 600s); default 1")
    t.set_defaults(func=cmd_train)

    se = sub.add_parser("search", help="k-fold cross-validated grid search (default: study 2 focal alpha grid)")
    _add_spec_args(se)
    se.add_argument("--model", help="model name or key (default: the spec's first)")
    se.add_argument("--loss", help="loss name or key (default: focal)")
    se.add_argument("--grid", action="append", help="KEY=V1,V2,... with KEY model.X, loss.X or training.X; repeatable")
    se.add_argument("--folds", type=int, default=5)
    se.add_argument("--metric", default="macro_f1")
    se.add_argument("--epochs", type=int, help="override training.epochs")
    se.add_argument("--data", help="a dataset directory written by `medens data summary --out`")
    se.add_argument("--out", help="output folder (default runs/<name>/search)")
    se.add_argument("--write-spec", help="write the spec with the best setting applied to this YAML file")
    se.set_defaults(func=cmd_search)


def _add_experiment_commands(sub: Any) -> None:
    """``run`` (a whole experiment), ``report`` (re-evaluate a run)."""
    r = sub.add_parser("run", help="run a whole experiment on this machine: data, members, ensembles, report")
    _add_spec_args(r)
    r.add_argument("--out", help="run directory (default <store.uri>/<name>-<time>)")
    r.add_argument("--epochs", type=int, help="override training.epochs")
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="(re)evaluate a run directory and write its report")
    rep.add_argument("--run", required=True, help="a run directory written by `medens run`")
    rep.add_argument("--out", help="output folder (default <run>/evaluation)")
    rep.set_defaults(func=cmd_report)


def _add_serving_commands(sub: Any) -> None:
    """``serve`` (KServe), ``probe`` (check a running endpoint)."""
    sv = sub.add_parser("serve", help="serve an ensemble artifact with KServe (v1 and v2 REST, v2 gRPC, /metrics)")
    sv.add_argument("--model-dir", required=True,
                    help="ensemble artifact: a directory (a run directory serves its best/), /mnt/models, or "
                         "s3://bucket/prefix/name (MinIO; MINIO_ENDPOINT and AWS_* credentials from the environment)")
    sv.add_argument("--model-name", help="served name (default: the experiment that produced the artifact)")
    sv.add_argument("--http-port", type=int, default=8080)
    sv.add_argument("--grpc-port", type=int, default=8081, help="v2 gRPC (inference.GRPCInferenceService) port; 0 "
                                                                "turns gRPC off (default 8081)")
    sv.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    sv.add_argument("--threads", type=int, help="torch threads of the forward (default: torch's, one per core; in a "
                                                "pod with a CPU limit set it to the limit)")
    sv.add_argument("--backend", choices=("auto", "onnx", "torch"), default=os.environ.get("MEDENS_SERVE_BACKEND", "auto"),
                    help="what runs the members: onnx (ONNX Runtime, the artifact's checked ONNX files), torch, or auto "
                         "(default, MEDENS_SERVE_BACKEND): onnx on the CPU when the artifact has ONNX files, else torch")
    sv.add_argument("--endpoint", help="S3/MinIO endpoint for an s3:// model dir (default MINIO_ENDPOINT)")
    sv.add_argument("--max-batch", type=int, help="images per forward; 1 disables micro-batching (default 32)")
    sv.add_argument("--max-wait-ms", type=float, help="longest a partial batch waits for the images expected "
                                                      "under the current load, at most one forward (default 50)")
    sv.add_argument("--forward-workers", type=int,
                    help="forwards that may run at once (MEDENS_SERVE_FORWARD_WORKERS; default 0, auto: 2 with ONNX "
                         "Runtime on two or more cores, each with half the threads, so one computes while the other "
                         "batch's clients are answered; PyTorch always 1)")
    sv.add_argument("--max-instances", type=int, help="images per request (default 64)")
    sv.add_argument("--max-bytes", type=int, help="request body bytes (default 32 MiB)")
    sv.add_argument("--max-pixels", type=int, help="pixels per image (default 4096 x 4096)")
    sv.add_argument("--max-request-pixels", type=int, help="pixels of all images of a request (default 2 x 4096 x 4096)")
    sv.set_defaults(func=cmd_serve)

    pr = sub.add_parser("probe", help="check a running endpoint: wait until ready, predict one grey image")
    pr.add_argument("--url", required=True, help="base URL, e.g. http://rbc-demo-predictor.ml.svc.cluster.local")
    pr.add_argument("--model", required=True, help="served model name")
    pr.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for readiness (default 30)")
    pr.set_defaults(func=cmd_probe)


def _add_library_commands(sub: Any) -> None:
    """``losses list``, ``models list``."""
    losses = sub.add_parser("losses", help="the loss library")
    lsub = losses.add_subparsers(dest="losses_command", required=True)
    ll = lsub.add_parser("list", help="table of every loss: formula, parameters, source")
    ll.add_argument("--task", choices=["classification", "segmentation"], default=None)
    ll.add_argument("--format", choices=["text", "markdown"], default="text")
    ll.set_defaults(func=cmd_losses_list)

    models = sub.add_parser("models", help="the model zoo and the pretrained weights on this machine")
    msub = models.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="every architecture, its member-id alias, and its pretrained weights here "
                                      "(package / MEDENS_WEIGHTS_DIR / none)")
    ml.add_argument("--task", choices=["classification", "segmentation"], default=None)
    ml.add_argument("--format", choices=["text", "json"], default="text")
    ml.set_defaults(func=cmd_models_list)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        print(f"medens: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
