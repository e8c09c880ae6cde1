"""Synthetic data generators (docs/methods.md section 4.5): red-blood-cell crops and smears, lesion scans.

The red-blood-cell data imitate study 2 (Pasupa, Vatathanavaro, Tungjitnob: focal loss for
red-blood-cell morphology; classes codocyte, hypochromia, normal). Cells are stained discs whose
class is carried by the central pallor:

- normal: pale centre of radius about 0.35 r;
- codocyte (target cell): pale ring out to about 0.47 r around a dark central spot of about 0.15 r;
- hypochromia: pale centre out to about 0.55 r, and less haemoglobin (paler) overall.

Morphology parameters are drawn from overlapping per-class distributions, so a few percent of
cells are genuinely ambiguous (the Bayes accuracy is below 100%). Crops and smears are drawn by
one renderer: :func:`_cell_absorbance` gives a cell's stain density on any pixel grid and
:func:`_compose` turns density into an RGB image (Beer-Lambert stain, plasma background,
illumination gradient, blur, noise).

The segmentation scans imitate the lesion tasks of study 3 (Roshan et al., Computers in Biology
and Medicine 2024): small, low-contrast, irregular lesions in a textured organ, plus distractors.

Measured difficulty of the 48 px cell crops (macro-F1 on a balanced test set): logistic
regression on raw pixels, 300 training cells per class, about 0.74-0.80 (cell position,
rotation and stain jitter defeat a linear template); a six-layer CNN trained 12 epochs on 1,400
cells at 10:10:80, about 0.97.

Every generator takes a seed and is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.special import expit

CELL_CLASSES: tuple[str, ...] = ("codocyte", "hypochromia", "normal")
"""Class names of the cell data; the order is the label index."""

CELL_FRACTION = 0.8
"""A cell's diameter as a fraction of the crop side (docs/methods.md section 4.5)."""

DEFAULT_SMEAR_FRACTIONS = (0.1, 0.1, 0.8)
"""Class distribution of smear cells: study 2's 10:10:80 (codocyte:hypochromia:normal)."""

MIN_CELL_SIZE = 16
MIN_SEG_SIZE = 32

_RADIUS_JITTER = 0.08  # uniform +-8% about the nominal radius
_MAX_ELLIPTICITY = 0.08  # axis ratio up to about 1.17
_CROP_OFFSET = 0.09  # cell centre offset in a crop, fraction of the crop side
_NEIGHBOUR_PROB = 0.35  # chance that a crop shows part of a neighbouring cell
_TOUCH_PROB = 0.3  # chance that a smear cell is placed touching another one
_EDGE_PX = 0.6  # width of the membrane edge in pixels before blur


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return np.random.default_rng(int(seed))


# ---------------------------------------------------------------------------------------------
# Cell morphology and rendering (shared by make_cells and make_smears)
# ---------------------------------------------------------------------------------------------


def _sample_morphology(labels: np.ndarray, rng: np.random.Generator, separation: float = 1.0) -> dict[str, np.ndarray]:
    """Per-cell morphology parameters; radii are fractions of the cell radius.

    The class distributions overlap at their tails (normal/hypochromia pallor radius and overall
    stain; codocytes whose central spot is faint), which makes a few percent of cells ambiguous.
    ``separation`` scales every class's offset from the normal cell (pallor radius and depth, stain,
    the strength of a codocyte's spot): 1 is the default morphology, smaller values move the
    abnormal classes towards normal, so more cells are ambiguous and the task is harder.
    """
    n = len(labels)
    codo, hypo = labels == 0, labels == 1
    sep = float(separation)

    def shifted(normal: float, abnormal: float) -> float:  # exact at 1, so the default output stays bit for bit
        return abnormal if sep == 1.0 else normal + sep * (abnormal - normal)

    pallor = rng.normal(0.35, 0.05, n)
    pallor[hypo] = rng.normal(shifted(0.35, 0.55), 0.055, hypo.sum())
    pallor[codo] = rng.normal(shifted(0.35, 0.47), 0.045, codo.sum())
    depth = rng.uniform(0.45, 0.7, n)
    depth[hypo] = rng.uniform(shifted(0.45, 0.6), shifted(0.7, 0.85), hypo.sum())
    depth[codo] = rng.uniform(shifted(0.45, 0.55), shifted(0.7, 0.8), codo.sum())
    stain = rng.normal(1.0, 0.07, n)
    stain[hypo] = rng.normal(shifted(1.0, 0.82), 0.07, hypo.sum())
    spot = np.zeros(n)
    spot[codo] = np.clip(rng.normal(0.15, 0.025, codo.sum()), 0.07, 0.25)
    strength = np.zeros(n)
    # Most target cells have a clear central spot; about 8% have a faint one and then look
    # like a normal cell or a hypochromic one with a large pallor.
    faint = rng.random(n) < 0.08
    strength[codo] = sep * np.where(faint[codo], rng.uniform(0.0, 0.3, codo.sum()),
                                    rng.uniform(0.65, 1.0, codo.sum()))
    offset_angle = rng.uniform(0, 2 * np.pi, n)
    offset = rng.uniform(0, 0.05, n)
    return {
        "pallor": np.clip(pallor, 0.15, 0.72),
        "depth": depth,
        "spot": spot,
        "spot_strength": strength,
        "stain": np.clip(stain, 0.55, 1.25),
        "ellipticity": rng.uniform(0, _MAX_ELLIPTICITY, n),
        "angle": rng.uniform(0, np.pi, n),
        "pallor_dy": offset * np.sin(offset_angle),
        "pallor_dx": offset * np.cos(offset_angle),
    }


def _cell_absorbance(dy: np.ndarray, dx: np.ndarray, radius: np.ndarray, m: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stain density of one or many cells at pixel offsets ``(dy, dx)`` from the cell centres.

    ``radius`` and the morphology arrays ``m`` broadcast against ``dy``/``dx`` (scalars for one
    cell on a patch, ``(N, 1, 1)`` for a batch of crops). The density is haemoglobin thickness
    times stain: a slightly elliptical disc with a thicker rim, minus the central pallor, with
    the pallor cancelled inside a codocyte's central spot. Computed in float32 for speed.
    """
    dy, dx, radius = (np.asarray(x, dtype=np.float32) for x in (dy, dx, radius))
    m = {k: np.asarray(v, dtype=np.float32) for k, v in m.items()}
    c, s = np.cos(m["angle"]), np.sin(m["angle"])
    u = c * dy + s * dx
    v = c * dx - s * dy
    a = 1.0 + m["ellipticity"]
    rho = np.sqrt((u / a) ** 2 + (v * a) ** 2) / radius
    body = expit((1.0 - rho) * radius / _EDGE_PX)
    rp = np.hypot(dy / radius - m["pallor_dy"], dx / radius - m["pallor_dx"])
    pale = expit((m["pallor"] - rp) / 0.05)
    spot = m["spot_strength"] * expit((m["spot"] - rp) / 0.035)
    thickness = 1.0 + 0.12 * np.exp(-(((rho - 0.82) / 0.12) ** 2)) - m["depth"] * pale * (1.0 - spot)
    return m["stain"] * body * thickness


def _sample_style(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image stain, background, illumination, blur and noise settings."""
    base_od = np.array([0.17, 0.68, 0.52])  # red/pink stain: absorbs green and blue most
    od = base_od * rng.uniform(0.7, 1.3, (n, 1)) * rng.normal(1.0, 0.06, (n, 3))
    bg = np.clip(np.array([0.94, 0.90, 0.87]) + rng.normal(0, 0.02, (n, 3)), 0.7, 1.0)
    angle = rng.uniform(0, 2 * np.pi, n)
    slope = rng.uniform(0.002, 0.008, n)  # illumination change per cell radius
    return {
        "od": np.clip(od, 0.05, None),
        "bg": bg,
        "gain": rng.uniform(0.88, 1.04, n),
        "grad_y": slope * np.sin(angle),
        "grad_x": slope * np.cos(angle),
        "blur": rng.uniform(0.03, 0.07, n),  # blur sigma per cell radius
        "noise": rng.uniform(0.01, 0.025, n),
    }


def _compose(
    absorb: np.ndarray, style: Mapping[str, np.ndarray], radius: float, rng: np.random.Generator
) -> np.ndarray:
    """RGB uint8 images ``(B, H, W, 3)`` from stain densities ``(B, H, W)`` (Beer-Lambert)."""
    b, h, w = absorb.shape
    style = {k: np.asarray(v, dtype=np.float32) for k, v in style.items()}
    yy = ((np.arange(h) - (h - 1) / 2) / radius).astype(np.float32)
    xx = ((np.arange(w) - (w - 1) / 2) / radius).astype(np.float32)
    illum = (
        style["gain"][:, None, None]
        + style["grad_y"][:, None, None] * yy[None, :, None]
        + style["grad_x"][:, None, None] * xx[None, None, :]
    )
    # Optical blur applied to the stain density (one channel instead of three; visually the same).
    absorb = absorb.astype(np.float32)
    for i in range(b):
        sigma = float(style["blur"][i]) * radius
        absorb[i] = ndimage.gaussian_filter(absorb[i], sigma=sigma, mode="nearest")
    od = style["od"][:, None, None, :]
    img = style["bg"][:, None, None, :] * illum[..., None] * np.exp(-absorb[..., None] * od)
    img += rng.standard_normal(img.shape, dtype=np.float32) * style["noise"][:, None, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _class_counts(counts: Mapping[str, int] | Sequence[int]) -> np.ndarray:
    if isinstance(counts, Mapping):
        unknown = sorted(set(counts) - set(CELL_CLASSES), key=str)
        if unknown:
            raise ValueError(f"unknown cell class name(s) {unknown}; known: {list(CELL_CLASSES)}")
        values = [counts.get(c, 0) for c in CELL_CLASSES]
    elif isinstance(counts, (Sequence, np.ndarray)) and not isinstance(counts, str):
        values = list(counts)
        if len(values) != len(CELL_CLASSES):
            raise ValueError(f"counts must have {len(CELL_CLASSES)} entries {list(CELL_CLASSES)}, got {len(values)}")
    else:
        raise ValueError(
            f"counts must be a dict of class name -> count or a list of 3 counts, got {type(counts).__name__}"
        )
    out = []
    for name, v in zip(CELL_CLASSES, values, strict=True):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"count for {name!r} must be an integer, got {v!r}")
        if v < 0:
            raise ValueError(f"count for {name!r} must be non-negative, got {v}")
        out.append(int(v))
    return np.asarray(out, dtype=np.int64)


def make_cells(
    counts: dict[str, int] | list[int],
    size: int = 48,
    seed: int = 0,
    *,
    neighbour_prob: float = _NEIGHBOUR_PROB,
    chunk: int = 128,
    separation: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Red-blood-cell crops drawn directly, one cell per crop (docs/methods.md section 4.5, study 2).

    Each crop shows one cell spanning about 80% of the crop (radius jittered +-8%), slightly
    elliptical and randomly rotated, its centre offset by up to 9% of the crop side, with stain,
    background, illumination, blur and noise drawn per crop; about a third of the crops also
    show part of a touching neighbour cell at the border. Classes follow the central pallor of
    study 2 (Pasupa, Vatathanavaro, Tungjitnob): codocyte, hypochromia, normal.

    Args:
        counts: cells per class, as ``{class name: count}`` (missing classes count 0) or a list
            in :data:`CELL_CLASSES` order.
        size: crop side in pixels (48-64 for CPU presets, 224 for the paper).
        seed: random seed; the same seed gives identical output.
        neighbour_prob: probability that a crop shows part of a neighbouring cell.
        chunk: cells rendered per vectorised batch (bounds memory at large sizes).
        separation: how far the abnormal classes' morphology lies from the normal cell's
            (1: the default; towards 0 the classes overlap more and the task is harder; 0 makes
            the classes indistinguishable).

    Returns:
        ``images`` uint8 ``(N, size, size, 3)`` RGB, ``labels`` int64 ``(N,)`` indexing
        :data:`CELL_CLASSES`, and one metadata dict per cell (``class``, ``label``, ``center``
        (row, col), ``radius``, ``pallor_radius``, ``pallor_fraction``, ``pallor_depth``,
        ``spot_radius``, ``spot_strength``, ``stain``, ``ellipticity``, ``angle``, ``neighbour``).
        Samples are in a seeded random order, not grouped by class.

    Raises:
        ValueError: on negative or non-integer counts, unknown class names, or ``size`` below 16.
    """
    n_per_class = _class_counts(counts)
    _check_cells_args(size, neighbour_prob, chunk, separation)
    rng = _rng(seed)
    size = int(size)
    n = int(n_per_class.sum())
    labels = rng.permutation(np.repeat(np.arange(len(CELL_CLASSES), dtype=np.int64), n_per_class))
    r0 = CELL_FRACTION * size / 2
    radius = r0 * rng.uniform(1 - _RADIUS_JITTER, 1 + _RADIUS_JITTER, n)
    centre = (size - 1) / 2 + rng.uniform(-_CROP_OFFSET, _CROP_OFFSET, (n, 2)) * size
    morph = _sample_morphology(labels, rng, separation)
    # Neighbour: a cell of a random class just touching the main one, mostly outside the crop.
    has_nb = rng.random(n) < neighbour_prob
    nb_morph = _sample_morphology(rng.integers(0, len(CELL_CLASSES), n), rng)
    nb_radius = r0 * rng.uniform(1 - _RADIUS_JITTER, 1 + _RADIUS_JITTER, n)
    nb_angle = rng.uniform(0, 2 * np.pi, n)
    nb_dist = radius + nb_radius + rng.uniform(-0.05, 0.1, n) * r0
    nb_centre = centre + nb_dist[:, None] * np.stack([np.sin(nb_angle), np.cos(nb_angle)], axis=1)
    style = _sample_style(n, rng)
    main = (centre, radius, morph)
    neighbour = (has_nb, nb_centre, nb_radius, nb_morph)
    images = _render_crops(size, chunk, r0, main, neighbour, style, rng)
    return images, labels, _crop_meta(labels, centre, radius, morph, has_nb)


def _check_cells_args(size: int, neighbour_prob: float, chunk: int, separation: float) -> None:
    """Raise ValueError on a bad argument of :func:`make_cells` (the counts are checked apart)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_CELL_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_CELL_SIZE}, got {size!r}")
    if not 0.0 <= neighbour_prob <= 1.0:
        raise ValueError(f"neighbour_prob must be in [0, 1], got {neighbour_prob}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if not 0.0 <= separation <= 1.0:
        raise ValueError(f"separation must be in [0, 1], got {separation}")


def _render_crops(
    size: int,
    chunk: int,
    r0: float,
    main: tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray]],
    neighbour: tuple[np.ndarray, np.ndarray, np.ndarray, Mapping[str, np.ndarray]],
    style: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """The crops of :func:`make_cells`, ``chunk`` at a time: the main cell, any neighbour, then
    :func:`_compose` (which draws the noise of each chunk from ``rng``).

    ``main`` is (centres, radii, morphology) of the crops' cells and ``neighbour`` is (has a
    neighbour, centres, radii, morphology) of the neighbour cells, one entry per crop.
    """
    centre, radius, morph = main
    has_nb, nb_centre, nb_radius, nb_morph = neighbour
    n = len(radius)
    grid = np.arange(size, dtype=np.float32)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        col = {k: v[sl, None, None] for k, v in morph.items()}
        dy = grid[None, :, None] - centre[sl, 0, None, None]
        dx = grid[None, None, :] - centre[sl, 1, None, None]
        absorb = _cell_absorbance(dy, dx, radius[sl, None, None], col)
        idx = np.flatnonzero(has_nb[sl]) + lo
        if idx.size:
            nb = {k: v[idx, None, None] for k, v in nb_morph.items()}
            ndy = grid[None, :, None] - nb_centre[idx, 0, None, None]
            ndx = grid[None, None, :] - nb_centre[idx, 1, None, None]
            absorb[idx - lo] += _cell_absorbance(ndy, ndx, nb_radius[idx, None, None], nb)
        images[sl] = _compose(absorb, {k: v[sl] for k, v in style.items()}, r0, rng)
    return images


def _crop_meta(
    labels: np.ndarray, centre: np.ndarray, radius: np.ndarray, morph: Mapping[str, np.ndarray], has_nb: np.ndarray
) -> list[dict]:
    """One metadata dict per crop of :func:`make_cells` (keys as documented there)."""
    return [
        {
            "class": CELL_CLASSES[labels[i]],
            "label": int(labels[i]),
            "center": (float(centre[i, 0]), float(centre[i, 1])),
            "radius": float(radius[i]),
            "pallor_radius": float(morph["pallor"][i] * radius[i]),
            "pallor_fraction": float(morph["pallor"][i]),
            "pallor_depth": float(morph["depth"][i]),
            "spot_radius": float(morph["spot"][i] * radius[i]),
            "spot_strength": float(morph["spot_strength"][i]),
            "stain": float(morph["stain"][i]),
            "ellipticity": float(morph["ellipticity"][i]),
            "angle": float(morph["angle"][i]),
            "neighbour": bool(has_nb[i]),
        }
        for i in range(len(labels))
    ]


def _place_cells(
    n_cells: int, size: int, cell_radius: float, rng: np.random.Generator, max_tries: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(M, 2)`` and radii ``(M,)`` of non-overlapping cells, some of them touching.

    Cells lie wholly inside the field. A fraction of them is placed against an already placed
    cell (centre distance 0.95-1.0 times the sum of radii); the rest keep a small gap. Cells
    that do not fit after ``max_tries`` attempts are dropped.
    """
    centres: list[tuple[float, float]] = []
    radii: list[float] = []
    for _ in range(n_cells):
        r = cell_radius * rng.uniform(1 - _RADIUS_JITTER, 1 + _RADIUS_JITTER)
        lo, hi = r + 1.0, size - 1.0 - r
        for _ in range(max_tries):
            touch = bool(centres) and rng.random() < _TOUCH_PROB
            if touch:
                j = rng.integers(len(centres))
                a = rng.uniform(0, 2 * np.pi)
                d = (r + radii[j]) * rng.uniform(0.95, 1.0)
                c = (centres[j][0] + d * np.sin(a), centres[j][1] + d * np.cos(a))
            else:
                c = tuple(rng.uniform(lo, hi, 2))
            if not (lo <= c[0] <= hi and lo <= c[1] <= hi):
                continue
            if centres:
                arr = np.asarray(centres)
                dist = np.hypot(arr[:, 0] - c[0], arr[:, 1] - c[1])
                need = (np.asarray(radii) + r) * (0.95 if touch else 1.05)
                if np.any(dist < need - 1e-9):
                    continue
            centres.append((float(c[0]), float(c[1])))
            radii.append(float(r))
            break
    return np.asarray(centres, dtype=np.float64).reshape(-1, 2), np.asarray(radii, dtype=np.float64)


def _fractions(class_fractions: Mapping[str, float] | Sequence[float] | None) -> np.ndarray:
    if class_fractions is None:
        return np.asarray(DEFAULT_SMEAR_FRACTIONS, dtype=np.float64)
    if isinstance(class_fractions, Mapping):
        unknown = sorted(set(class_fractions) - set(CELL_CLASSES), key=str)
        if unknown:
            raise ValueError(f"unknown cell class name(s) {unknown}; known: {list(CELL_CLASSES)}")
        values = [class_fractions.get(c, 0.0) for c in CELL_CLASSES]
    else:
        values = list(class_fractions)
        if len(values) != len(CELL_CLASSES):
            raise ValueError(f"class_fractions must have {len(CELL_CLASSES)} entries, got {len(values)}")
    f = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"class_fractions must be non-negative with a positive sum, got {values}")
    return f / f.sum()


def make_smears(
    n: int,
    size: int = 256,
    cell_radius: float = 12.0,
    class_fractions: Mapping[str, float] | Sequence[float] | None = None,
    seed: int = 0,
    cells_per_smear: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[list[dict]]]:
    """Blood smear fields with ground truth for cell extraction (docs/methods.md section 4.5, study 2).

    Cells drawn with the same renderer as :func:`make_cells` (class by central pallor, as in
    Pasupa, Vatathanavaro, Tungjitnob) are scattered over a pale plasma background with
    per-image stain jitter, an illumination gradient, blur and noise. Cells never overlap by more
    than 5% of their radii; placement puts 30% of them against an earlier cell, so about half
    of all cells touch a neighbour. All cells lie wholly inside the field.

    Args:
        n: number of smear images.
        size: side of a field in pixels.
        cell_radius: nominal cell radius in pixels (each cell jittered +-8%).
        class_fractions: class distribution of the cells (dict by name or list in
            :data:`CELL_CLASSES` order); default study 2's 10:10:80.
        seed: random seed; the same seed gives identical output.
        cells_per_smear: inclusive range of cells attempted per field; default covers 20-35% of
            the field's area. Cells that do not fit are dropped.

    Returns:
        ``images`` uint8 ``(n, size, size, 3)`` RGB and, per image, a list of ground-truth dicts
        with ``center`` (row, col), ``radius``, ``label`` (index into :data:`CELL_CLASSES`),
        ``class`` and the pallor parameters.

    Raises:
        ValueError: on a non-positive ``n``, ``cell_radius`` of 2 px or less, a field smaller than
            four cell radii, or bad ``class_fractions``/``cells_per_smear``.
    """
    fractions, (lo_n, hi_n) = _check_smear_args(n, size, cell_radius, class_fractions, cells_per_smear)
    rng = _rng(seed)
    size = int(size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    truth: list[list[dict]] = []
    for i in range(n):
        images[i], cells = _render_smear(size, cell_radius, (lo_n, hi_n), fractions, rng)
        truth.append(cells)
    return images, truth


def _check_smear_args(
    n: int,
    size: int,
    cell_radius: float,
    class_fractions: Mapping[str, float] | Sequence[float] | None,
    cells_per_smear: tuple[int, int] | None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Check the arguments of :func:`make_smears` (ValueError when bad); the normalised class
    fractions and the (low, high) range of cells per field."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not np.isfinite(cell_radius) or cell_radius <= 2:
        raise ValueError(f"cell_radius must be > 2 pixels, got {cell_radius}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < max(MIN_CELL_SIZE, 4 * cell_radius):
        raise ValueError(
            f"size must be an integer >= max(16, 4 * cell_radius) = {max(16, 4 * cell_radius):g}, got {size!r}"
        )
    fractions = _fractions(class_fractions)
    if cells_per_smear is None:
        cell_area = np.pi * cell_radius**2
        cells_per_smear = (max(1, int(0.2 * size**2 / cell_area)), max(1, int(0.35 * size**2 / cell_area)))
    lo_n, hi_n = cells_per_smear
    if lo_n < 0 or hi_n < lo_n:
        raise ValueError(f"cells_per_smear must be (low, high) with 0 <= low <= high, got {cells_per_smear}")
    return fractions, (lo_n, hi_n)


def _render_smear(
    size: int, cell_radius: float, n_range: tuple[int, int], fractions: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """One smear field of :func:`make_smears`: place the cells, draw their classes and morphology,
    sum their stain densities (each on a patch about its centre) and compose the RGB image.

    Returns the ``(size, size, 3)`` uint8 image and its ground-truth cell dicts.
    """
    grid = np.arange(size, dtype=np.float32)
    half = int(np.ceil(cell_radius * (1 + _RADIUS_JITTER) * (1 + _MAX_ELLIPTICITY) + 3))
    lo_n, hi_n = n_range
    centres, radii = _place_cells(int(rng.integers(lo_n, hi_n + 1)), size, cell_radius, rng)
    labels = rng.choice(len(CELL_CLASSES), size=len(radii), p=fractions).astype(np.int64)
    morph = _sample_morphology(labels, rng)
    absorb = np.zeros((1, size, size), dtype=np.float32)
    cells = []
    for j, ((cy, cx), r) in enumerate(zip(centres, radii, strict=True)):
        r0, r1 = max(0, int(cy) - half), min(size, int(cy) + half + 1)
        c0, c1 = max(0, int(cx) - half), min(size, int(cx) + half + 1)
        m = {k: v[j] for k, v in morph.items()}
        absorb[0, r0:r1, c0:c1] += _cell_absorbance(
            grid[r0:r1, None] - float(cy), grid[None, c0:c1] - float(cx), r, m
        )
        cells.append(
            {
                "center": (float(cy), float(cx)),
                "radius": float(r),
                "label": int(labels[j]),
                "class": CELL_CLASSES[labels[j]],
                "pallor_radius": float(m["pallor"] * r),
                "spot_radius": float(m["spot"] * r),
                "spot_strength": float(m["spot_strength"]),
            }
        )
    return _compose(absorb, _sample_style(1, rng), cell_radius, rng)[0], cells


# ---------------------------------------------------------------------------------------------
# Segmentation scans
# ---------------------------------------------------------------------------------------------


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (f.std() + 1e-12)


def _blob(
    size: int,
    centre: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    area: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An irregular blob: smooth noise thresholded inside an ellipse, about ``area`` pixels.

    The threshold is the quantile of (ellipse profile + noise) that leaves ``area`` pixels;
    only the largest connected piece is kept, so the blob is one lesion.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    rho2 = ((c * dy + s * dx) / axes[0]) ** 2 + ((c * dx - s * dy) / axes[1]) ** 2
    inside = rho2 < 1.0
    n_inside = int(inside.sum())
    if n_inside == 0:
        return np.zeros((size, size), dtype=bool)
    field = (1.0 - rho2) + 0.45 * _smooth_noise((size, size), max(1.0, min(axes) / 2.0), rng)
    k = int(np.clip(round(area), 1, n_inside))
    thresh = np.partition(field[inside], n_inside - k)[n_inside - k]
    blob = inside & (field >= thresh)
    lab, nlab = ndimage.label(blob)
    if nlab > 1:
        sizes = ndimage.sum_labels(blob, lab, index=np.arange(1, nlab + 1))
        blob = lab == (1 + int(np.argmax(sizes)))
    return blob


def make_segmentation(
    n: int, size: int = 64, seed: int = 0, *, lesion_probs: Sequence[float] = (0.2, 0.35, 0.3, 0.15)
) -> tuple[np.ndarray, np.ndarray]:
    """Grey lesion-segmentation scans with masks (docs/methods.md section 4.5; the task of study 3).

    Imitates the small-lesion tasks of Roshan et al. (Computers in Biology and Medicine 2024):
    a smooth textured organ on a darker surround; zero to three irregular lesions (smooth noise
    thresholded inside an ellipse) of low contrast, brighter than the tissue, inside the organ,
    with lesion pixels usually 0.5-5% of the image; and distractors that are not in the mask:
    darker blobs of lesion shape and size, thin bright vessel-like strands and small bright dots.

    Args:
        n: number of scans.
        size: side in pixels (>= 32).
        seed: random seed; the same seed gives identical output.
        lesion_probs: probabilities of 0, 1, 2, 3 lesions per scan.

    Returns:
        ``images`` uint8 ``(n, size, size, 1)`` and ``masks`` uint8 ``(n, size, size)`` in {0, 1}.

    Raises:
        ValueError: on a non-positive ``n``, ``size`` below 32 or bad ``lesion_probs``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SEG_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SEG_SIZE}, got {size!r}")
    probs = np.asarray(lesion_probs, dtype=np.float64)
    if probs.shape != (4,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
        raise ValueError(f"lesion_probs must be 4 non-negative probabilities summing to 1, got {list(lesion_probs)}")
    rng = _rng(seed)
    size = int(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n, size, size, 1), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        img, orho, organ = _organ(size, yy, xx, rng)
        mask = np.zeros((size, size), dtype=bool)
        n_les = int(rng.choice(4, p=probs))
        if n_les:
            mask = _lesion_mask(size, n_les, orho, rng)
            contrast = rng.uniform(0.07, 0.13)
            img += contrast * ndimage.gaussian_filter(mask.astype(np.float64), 0.8)
        img += _distractors(size, yy, xx, rng) * organ
        img += rng.normal(0, 0.015, img.shape)
        images[i, :, :, 0] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        masks[i] = mask
    return images, masks


def _organ(
    size: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scan's organ: a large soft ellipse with a wobbly outline, textured at two scales.

    Returns the grey image so far (float, surround and textured organ), the organ's normalised
    radius ``orho`` (1 on the outline) and its soft membership ``organ`` in [0, 1].
    """
    oc = (size / 2 + rng.uniform(-0.06, 0.06) * size, size / 2 + rng.uniform(-0.06, 0.06) * size)
    oa = rng.uniform(0.36, 0.46, 2) * size
    ang = rng.uniform(0, np.pi)
    c, s = np.cos(ang), np.sin(ang)
    dy, dx = yy - oc[0], xx - oc[1]
    orho = np.sqrt(((c * dy + s * dx) / oa[0]) ** 2 + ((c * dx - s * dy) / oa[1]) ** 2)
    orho = orho + 0.06 * _smooth_noise((size, size), size / 10, rng)
    organ = expit((1.0 - orho) * size / 6)
    img = 0.18 + rng.uniform(0.3, 0.4) * organ
    img += organ * (
        0.05 * _smooth_noise((size, size), size / 12, rng) + 0.025 * _smooth_noise((size, size), 1.2, rng)
    )
    img += 0.02 * _smooth_noise((size, size), size / 5, rng)
    return img, orho, organ


def _lesion_mask(size: int, n_les: int, orho: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The mask of ``n_les`` >= 1 lesions: irregular blobs centred inside the organ (``orho`` <=
    0.7), kept off the two-pixel margin of earlier lesions; a lesion that finds no place in 30
    tries is left out. Their target total area, 0.8-4% of the scan (log-uniform), is shared out
    by a Dirichlet draw (at least 12 pixels each)."""
    mask = np.zeros((size, size), dtype=bool)
    total = np.exp(rng.uniform(np.log(0.008), np.log(0.04))) * size * size
    shares = rng.dirichlet(np.full(n_les, 2.0)) if n_les > 1 else np.ones(1)
    for share in shares:
        area = max(12.0, total * share)
        for _ in range(30):
            aspect = rng.uniform(0.55, 1.0)
            a = np.sqrt(area / (0.6 * np.pi * aspect))
            cen = (rng.uniform(0.25, 0.75) * size, rng.uniform(0.25, 0.75) * size)
            ci, cj = int(cen[0]), int(cen[1])
            if orho[ci, cj] > 0.7:
                continue
            blob = _blob(size, cen, (a, a * aspect), rng.uniform(0, np.pi), area, rng)
            if not (blob & ndimage.binary_dilation(mask, iterations=2)).any():
                mask |= blob
                break
    return mask


def _distractors(size: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to three distractors (not in the mask), summed: darker lesion-shaped blobs, thin
    bright vessel-like strands or groups of small bright dots."""
    distract = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.integers(3)
        if kind == 0:  # darker blob shaped like a lesion
            area = np.exp(rng.uniform(np.log(0.004), np.log(0.015))) * size * size
            a = np.sqrt(area / (0.6 * np.pi * 0.8))
            cen = tuple(rng.uniform(0.25, 0.75, 2) * size)
            blob = _blob(size, cen, (a, 0.8 * a), rng.uniform(0, np.pi), area, rng)
            distract -= rng.uniform(0.07, 0.12) * ndimage.gaussian_filter(blob.astype(np.float64), 0.8)
        elif kind == 1:  # thin bright vessel-like strand
            distract += _strand(size, rng)
        else:  # small bright dots
            for _ in range(int(rng.integers(2, 5))):
                cy, cx = rng.uniform(0.15, 0.85, 2) * size
                distract += rng.uniform(0.1, 0.18) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.0**2))
    return distract


def _strand(size: int, rng: np.random.Generator) -> np.ndarray:
    """A thin bright vessel-like strand: a wobbly line segment, blurred, as a brightness change."""
    t = np.linspace(0, 1, 4 * size)
    p0 = rng.uniform(0.15, 0.85, 2) * size
    d = rng.normal(size=2)
    d = d / (np.linalg.norm(d) + 1e-12) * rng.uniform(0.3, 0.6) * size
    wobble = rng.uniform(1.5, 4.0) * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3))
    py = np.clip(p0[0] + d[0] * t - d[1] / np.linalg.norm(d) * wobble, 0, size - 1)
    px = np.clip(p0[1] + d[1] * t + d[0] / np.linalg.norm(d) * wobble, 0, size - 1)
    line = np.zeros((size, size))
    line[np.rint(py).astype(int), np.rint(px).astype(int)] = 1.0
    return rng.uniform(0.08, 0.13) * np.minimum(ndimage.gaussian_filter(line, 0.6) * 2.5, 1.0)
