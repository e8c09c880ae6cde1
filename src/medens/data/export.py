"""Write synthetic data as folders a person can open: the layouts the folder sources read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medens.storage.atomic import atomic_write_text


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    Image.fromarray(a).save(path)


def write_synthetic(kind: str, out: str | Path, *, n: int | None = None, size: int | None = None,
                    seed: int = 0, counts: dict[str, int] | None = None) -> dict:
    """Generate ``kind`` (cells, smears, segmentation) into ``out``.

    - cells: ``out/<class>/cell-00000.png`` (the ``image_folder`` layout);
    - smears: ``out/smears/smear-0000.png`` and ``out/annotations.json`` (centre, radius, class
      of every cell);
    - segmentation: ``out/images/scan-00000.png`` and ``out/masks/scan-00000.png`` with lesion
      pixels 255 (the ``seg_folder`` layout).
    """
    from tqdm.auto import tqdm

    from medens.data.synthetic import CELL_CLASSES, make_cells, make_segmentation, make_smears

    root = Path(out)
    if kind == "cells":
        counts = counts or {c: 50 for c in CELL_CLASSES}
        images, labels, _ = make_cells(counts, size=size or 48, seed=seed)
        for i, (img, y) in enumerate(tqdm(list(zip(images, labels)), desc="cells", disable=None)):
            _save_png(root / CELL_CLASSES[y] / f"cell-{i:05d}.png", img)
        return {"n_files": len(images), "layout": "image_folder: <class>/*.png"}
    if kind == "smears":
        smears, truth = make_smears(n or 10, size=size or 256, seed=seed)
        ann = {}
        for i, (img, cells) in enumerate(tqdm(list(zip(smears, truth)), desc="smears", disable=None)):
            name = f"smear-{i:04d}.png"
            _save_png(root / "smears" / name, img)
            ann[name] = [{"center": [float(c) for c in cell["center"]], "radius": float(cell["radius"]),
                          "class": cell["class"]} for cell in cells]
        atomic_write_text(root / "annotations.json", json.dumps(ann, indent=1))
        return {"n_files": len(smears) + 1, "layout": "smears/*.png + annotations.json"}
    if kind == "segmentation":
        images, masks = make_segmentation(n or 50, size=size or 64, seed=seed)
        for i, (img, m) in enumerate(tqdm(list(zip(images, masks)), desc="scans", disable=None)):
            _save_png(root / "images" / f"scan-{i:05d}.png", img)
            _save_png(root / "masks" / f"scan-{i:05d}.png", (m > 0).astype(np.uint8) * 255)
        return {"n_files": 2 * len(images), "layout": "seg_folder: images/*.png + masks/*.png"}
    raise ValueError(f"unknown synthetic kind {kind!r}; expected cells, smears or segmentation")
