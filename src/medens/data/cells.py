"""Red-blood-cell extraction from smear fields (study 2, Algorithm 1) and its scoring.

Pasupa, Vatathanavaro and Tungjitnob (focal loss for red-blood-cell morphology) cut single
cells out of smear images before classification: up-scale the smear so a cell spans the target
diameter, convert to grey, equalise with CLAHE, find cells with the circle Hough transform, crop
each cell and zero-pad it to the network's input size. :func:`extract_cells` implements those
steps with scikit-image; :func:`match_detections` scores the detections against the ground
truth of :func:`medens.data.synthetic.make_smears`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.color import rgb2gray
from skimage.exposure import equalize_adapthist
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.transform import hough_circle, hough_circle_peaks, rescale


def _as_float_image(smear: np.ndarray) -> np.ndarray:
    """The smear as float RGB in [0, 1], ``(H, W, 3)``; grey input is repeated to 3 channels."""
    if not isinstance(smear, np.ndarray):
        raise ValueError(f"smear must be a numpy array, got {type(smear).__name__}")
    if smear.ndim == 3 and smear.shape[2] == 1:
        smear = smear[:, :, 0]
    if not (smear.ndim == 2 or (smear.ndim == 3 and smear.shape[2] == 3)):
        raise ValueError(f"smear must have shape (H, W, 3) or (H, W), got {smear.shape}")
    if min(smear.shape[:2]) < 8:
        raise ValueError(f"smear is too small: {smear.shape[:2]}, need at least 8 x 8 pixels")
    if smear.dtype == np.uint8:
        img = smear.astype(np.float64) / 255.0
    elif np.issubdtype(smear.dtype, np.floating):
        if not np.all(np.isfinite(smear)):
            raise ValueError("smear has NaN or inf pixels")
        if smear.min() < 0.0 or smear.max() > 1.0:
            raise ValueError(f"float smear must lie in [0, 1], got [{smear.min():g}, {smear.max():g}]")
        img = smear.astype(np.float64)
    else:
        raise ValueError(f"smear must be uint8 or float, got dtype {smear.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img


def _cell_mask(grey: np.ndarray) -> np.ndarray:
    """Cells (darker than the plasma) as a filled binary mask, by Otsu's threshold."""
    if np.ptp(grey) < 1e-6:
        return np.zeros(grey.shape, dtype=bool)
    fg = grey < threshold_otsu(grey)
    fg = ndimage.binary_opening(fg, iterations=1)
    return ndimage.binary_fill_holes(fg)


def estimate_cell_radius(smear: np.ndarray) -> float | None:
    """Typical cell radius in pixels, from the distance transform of the cell mask.

    Each cell's centre is a local maximum of the distance to the background whose value is the
    cell's radius (touching cells keep separate maxima); the median over maxima is returned.

    Args:
        smear: ``(H, W, 3)`` or ``(H, W)`` image, uint8 or float in [0, 1].

    Returns:
        The radius estimate, or None when no cell-like region is found.
    """
    grey = rgb2gray(_as_float_image(smear))
    dist = ndimage.distance_transform_edt(_cell_mask(grey))
    peaks = peak_local_max(dist, min_distance=2, threshold_abs=2.0, exclude_border=False)
    if len(peaks) == 0:
        return None
    return float(np.median(dist[peaks[:, 0], peaks[:, 1]]))


def _crops(image: np.ndarray, centres: np.ndarray, scale: float, side: int, target: int) -> np.ndarray:
    """Crops of ``image`` up-scaled by ``scale``: a ``side`` x ``side`` window about each centre
    (original coordinates), zero beyond the image, zero-padded or centre-cut to ``target``.

    Interpolates only the windows (bilinear, as ``skimage.transform.rescale`` with order 1)
    instead of up-scaling the whole smear, which at 224 px crops is a 7x larger image.
    """
    h, w = image.shape[:2]
    if scale < 1:  # anti-aliasing as in skimage.transform.rescale
        sigma = (1.0 / scale - 1.0) / 2.0
        image = ndimage.gaussian_filter(image, (sigma, sigma, 0), mode="mirror")
    # Up-scaled pixel i sits at original coordinate (i + 0.5) / scale - 0.5.
    up = (centres + 0.5) * scale - 0.5
    top = np.rint(up - side / 2.0).astype(np.int64)
    steps = np.arange(side)
    rows = (top[:, 0, None] + steps[None, :] + 0.5) / scale - 0.5
    cols = (top[:, 1, None] + steps[None, :] + 0.5) / scale - 0.5
    m = len(centres)
    rr = np.broadcast_to(rows[:, :, None], (m, side, side))
    cc = np.broadcast_to(cols[:, None, :], (m, side, side))
    inside = (rr >= -0.5) & (rr <= h - 0.5) & (cc >= -0.5) & (cc <= w - 0.5)
    win = np.empty((m, side, side, 3))
    for ch in range(3):
        win[..., ch] = ndimage.map_coordinates(image[:, :, ch], [rr, cc], order=1, mode="nearest")
    win[~inside] = 0.0
    win = np.clip(np.rint(win * 255.0), 0, 255).astype(np.uint8)
    out = np.zeros((m, target, target, 3), dtype=np.uint8)
    if side <= target:
        o = (target - side) // 2
        out[:, o : o + side, o : o + side] = win
    else:
        o = (side - target) // 2
        out[:] = win[:, o : o + target, o : o + target]
    return out


def extract_cells(
    smear: np.ndarray,
    target_size: int = 48,
    expected_radius: float | None = None,
    cell_fraction: float = 0.8,
    *,
    pad: Literal["zero", "context"] = "zero",
    radius_tolerance: float = 0.2,
    threshold: float = 0.45,
    min_cell_cover: float = 0.7,
    max_hough_radius: float = 24.0,
) -> tuple[np.ndarray, list[dict]]:
    """Find and crop red blood cells in a smear: Algorithm 1 of study 2.

    Pasupa, Vatathanavaro, Tungjitnob (focal loss for red-blood-cell morphology): up-scale the
    smear so a cell spans ``target_size * cell_fraction`` pixels, grey-scale, CLAHE
    (``equalize_adapthist``), circle Hough transform (``hough_circle``/``hough_circle_peaks``)
    to find the cells, crop each cell and zero-pad it to ``target_size``.

    The Hough transform votes from the outline of the cell mask (Otsu's threshold of the CLAHE
    image, holes filled), widened to three pixels. Outlines ignore the pallor edges inside
    cells, which as Canny edges attract small off-centre circles (about 14% false detections on
    the synthetic smears, against none). Circles closer than 0.8 radii to a stronger one are
    dropped, and so are circles whose disc is less than ``min_cell_cover`` cell pixels, which
    removes circles fitted to the gap between touching cells. When the up-scaled cell radius
    exceeds ``max_hough_radius`` the Hough transform runs at that smaller scale (its cost grows
    with the radius cubed); the crops still come from the image up-scaled to the target.

    Args:
        smear: ``(H, W, 3)`` RGB or ``(H, W)`` grey image, uint8 or float in [0, 1].
        target_size: side of the output crops.
        expected_radius: typical cell radius in the smear in pixels; estimated with
            :func:`estimate_cell_radius` when None.
        cell_fraction: cell diameter as a fraction of ``target_size`` (0.8 as in the synthetic
            crops of :func:`medens.data.synthetic.make_cells`).
        pad: "zero" (the paper): crop the cell's bounding square (side ``target_size *
            cell_fraction``) and zero-pad it to ``target_size``; "context": crop a full
            ``target_size`` window about the cell (zero only beyond the smear's border).
        radius_tolerance: radii searched are the expected radius times 1 -/+ this.
        threshold: minimum Hough score, the fraction of a circle's perimeter on edge pixels.
        min_cell_cover: minimum fraction of a detected disc covered by the cell mask.
        max_hough_radius: largest cell radius (pixels) at which the Hough transform runs.

    Returns:
        ``crops`` uint8 ``(M, target_size, target_size, 3)`` and one dict per crop with
        ``center`` (row, col) and ``radius`` in the original smear's pixel coordinates and
        ``score`` (the Hough score), in the same order.

    Raises:
        ValueError: if the smear is not an ``(H, W, 3)``/``(H, W)`` uint8 or float image, or an
            argument is out of range.
    """
    img = _as_float_image(smear)
    _check_extract_args(target_size, expected_radius, cell_fraction, pad, radius_tolerance, threshold,
                        max_hough_radius)
    target_size = int(target_size)
    empty = np.zeros((0, target_size, target_size, 3), dtype=np.uint8)

    grey = rgb2gray(img)
    r_exp = expected_radius if expected_radius is not None else estimate_cell_radius(img)
    if r_exp is None:
        return empty, []
    target_r = target_size * cell_fraction / 2.0
    scale = target_r / r_exp
    det_scale = min(scale, max_hough_radius / r_exp)

    acc, cx, cy, rr = _detect(grey, det_scale, r_exp * det_scale, radius_tolerance, threshold, min_cell_cover)
    if not acc.size:
        return empty, []
    # Back to original coordinates (inverse of the rescale pixel mapping).
    centres = (np.stack([cy, cx], axis=1) + 0.5) / det_scale - 0.5
    side = target_size if pad == "context" else max(1, int(round(2 * target_r)))
    crops = _crops(img, centres, scale, side, target_size)
    detections = [
        {"center": (float(c[0]), float(c[1])), "radius": float(r / det_scale), "score": float(a)}
        for c, r, a in zip(centres, rr, acc, strict=True)
    ]
    return crops, detections


def _detect(
    grey: np.ndarray, det_scale: float, r_det: float, radius_tolerance: float, threshold: float, min_cell_cover: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells found in ``grey`` rescaled by ``det_scale``, where a cell's radius is ``r_det``:
    CLAHE, cell mask, circle Hough on its outline, suppression of weaker neighbours and of
    circles off the cells. Returns ``(score, col, row, radius)`` of the kept circles, strongest
    first, in the rescaled image's pixels."""
    det = rescale(grey, det_scale, order=1, anti_aliasing=det_scale < 1)
    mask = _cell_mask(equalize_adapthist(det))
    acc, cx, cy, rr = _hough_circles(mask, r_det, radius_tolerance, threshold)
    idx = np.asarray(_suppress(acc, cx, cy, rr, mask, r_det, min_cell_cover), dtype=np.int64)
    return acc[idx], cx[idx], cy[idx], rr[idx]


def _check_extract_args(
    target_size: int,
    expected_radius: float | None,
    cell_fraction: float,
    pad: str,
    radius_tolerance: float,
    threshold: float,
    max_hough_radius: float,
) -> None:
    """Raise ValueError on an out-of-range argument of :func:`extract_cells`."""
    if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)) or target_size < 8:
        raise ValueError(f"target_size must be an integer >= 8, got {target_size!r}")
    if not 0.0 < cell_fraction <= 1.0:
        raise ValueError(f"cell_fraction must be in (0, 1], got {cell_fraction}")
    if expected_radius is not None and not (np.isfinite(expected_radius) and expected_radius > 1.0):
        raise ValueError(f"expected_radius must be > 1 pixel, got {expected_radius}")
    if pad not in ("zero", "context"):
        raise ValueError(f"pad must be 'zero' or 'context', got {pad!r}")
    if not 0.0 <= radius_tolerance < 1.0:
        raise ValueError(f"radius_tolerance must be in [0, 1), got {radius_tolerance}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if max_hough_radius < 4:
        raise ValueError(f"max_hough_radius must be >= 4, got {max_hough_radius}")


def _hough_circles(
    mask: np.ndarray, r_det: float, radius_tolerance: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Circle Hough peaks ``(score, col, row, radius)`` voted from the outline of the cell mask.

    The outline is widened to a 3-pixel band, so slightly elliptical cells still fill a circle;
    radii ``r_det`` times 1 -/+ ``radius_tolerance`` are searched, peaks at least half a radius
    apart with a score (fraction of the perimeter on the band) of at least ``threshold``.
    """
    edge_map = ndimage.binary_dilation(mask & ~ndimage.binary_erosion(mask))
    radii = np.arange(
        max(2, int(np.floor(r_det * (1 - radius_tolerance)))), int(np.ceil(r_det * (1 + radius_tolerance))) + 1
    )
    hspace = hough_circle(edge_map, radii, normalize=True, full_output=False)
    min_d = max(1, int(0.5 * r_det))
    return hough_circle_peaks(
        hspace, radii, min_xdistance=min_d, min_ydistance=min_d, threshold=threshold, normalize=False
    )


def _suppress(
    acc: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    rr: np.ndarray,
    mask: np.ndarray,
    r_det: float,
    min_cell_cover: float,
) -> list[int]:
    """Indices of the circles kept, strongest first: greedy non-maximum suppression in Euclidean
    distance (closer than 0.8 ``r_det`` to a kept circle), then the cell-cover check (at least
    ``min_cell_cover`` of the disc of 0.9 times the circle's radius lies in ``mask``)."""
    kept: list[int] = []
    for i in np.argsort(-acc, kind="stable"):
        if any(np.hypot(cy[i] - cy[k], cx[i] - cx[k]) < 0.8 * r_det for k in kept):
            continue
        r0, r1 = max(0, cy[i] - rr[i]), min(mask.shape[0], cy[i] + rr[i] + 1)
        c0, c1 = max(0, cx[i] - rr[i]), min(mask.shape[1], cx[i] + rr[i] + 1)
        yy, xx = np.ogrid[r0:r1, c0:c1]
        disc = (yy - cy[i]) ** 2 + (xx - cx[i]) ** 2 <= (0.9 * rr[i]) ** 2
        if disc.sum() == 0 or mask[r0:r1, c0:c1][disc].mean() < min_cell_cover:
            continue
        kept.append(int(i))
    return kept


def match_detections(detections: Sequence[dict], truth: Sequence[dict], max_center_error: float = 0.2) -> dict:
    """Match detected cells to ground-truth cells one-to-one (Hungarian assignment).

    Scores the cell extraction of study 2's Algorithm 1 on synthetic smears: a detection matches
    a true cell when their centres are closer than ``max_center_error`` times the true radius;
    among those pairs the assignment minimising the total relative centre error is used.

    Args:
        detections: dicts with ``center`` (row, col) (e.g. from :func:`extract_cells`).
        truth: dicts with ``center`` (row, col) and ``radius`` (e.g. from ``make_smears``).
        max_center_error: largest centre distance for a match, in true radii.

    Returns:
        ``recall`` (matched / true cells), ``false_detection_rate`` (unmatched / detections),
        ``n_true``, ``n_detected``, ``n_matched``, ``mean_center_error`` (in true radii, over
        matches), ``mean_radius_error`` (relative, over matches with a detected radius) and
        ``matches`` as ``(detection index, truth index)`` pairs. Rates are 0 when undefined
        (no true cells: recall 1.0).

    Raises:
        ValueError: if ``max_center_error`` is not positive or an entry lacks ``center``/``radius``.
    """
    if not max_center_error > 0:
        raise ValueError(f"max_center_error must be positive, got {max_center_error}")
    try:
        det = np.asarray([d["center"] for d in detections], dtype=np.float64).reshape(-1, 2)
        tru = np.asarray([t["center"] for t in truth], dtype=np.float64).reshape(-1, 2)
        r_true = np.asarray([t["radius"] for t in truth], dtype=np.float64)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"detections need 'center'; truth needs 'center' and 'radius' ({exc})") from exc
    if np.any(r_true <= 0):
        raise ValueError("true radii must be positive")
    n_det, n_true = len(det), len(tru)
    matches: list[tuple[int, int]] = []
    errors: list[float] = []
    radius_errors: list[float] = []
    if n_det and n_true:
        rel = np.hypot(det[:, None, 0] - tru[None, :, 0], det[:, None, 1] - tru[None, :, 1]) / r_true[None, :]
        ok = rel < max_center_error
        cost = np.where(ok, rel, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols, strict=True):
            if ok[i, j]:
                matches.append((int(i), int(j)))
                errors.append(float(rel[i, j]))
                if "radius" in detections[i]:
                    radius_errors.append(abs(float(detections[i]["radius"]) - r_true[j]) / r_true[j])
    n_matched = len(matches)
    return {
        "recall": n_matched / n_true if n_true else 1.0,
        "false_detection_rate": (n_det - n_matched) / n_det if n_det else 0.0,
        "n_true": n_true,
        "n_detected": n_det,
        "n_matched": n_matched,
        "mean_center_error": float(np.mean(errors)) if errors else 0.0,
        "mean_radius_error": float(np.mean(radius_errors)) if radius_errors else 0.0,
        "matches": matches,
    }
