"""A histogram-of-oriented-gradients member: fixed HOG features (Dalal and Triggs, CVPR 2005) and
a trained MLP head, behind the same interface as every other classifier.

On small real sets a CNN trained from scratch and HOG + SVM make different mistakes (texture
statistics against learned shapes), so an ensemble that holds both adds what each member misses.
``hog_mlp`` makes the classical member a first-class medens model: it trains with the engine's
losses, sampling, augmentation, EMA, calibration and test-time augmentation, is saved as a
``weights.pt`` artifact like any network, and is served by the same endpoint.

:class:`HOG` reproduces ``skimage.feature.hog`` (``block_norm="L2-Hys"``, ``transform_sqrt=False``,
``channel_axis=-1`` for colour: each pixel takes the channel with the largest gradient) on a
batch in torch, as a spatial feature map ``(B, blocks_per_cell_block * orientations, rows, cols)``
whose flattening in ``(row, col, block_row, block_col, orientation)`` order equals skimage's
feature vector (``tests/models/test_hog.py`` checks it against scikit-image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medens.models._common import MODELS, ClassifierModel, register

__all__ = ["HOG", "HogMLP", "hog_mlp"]


class HOG(nn.Module):
    """HOG descriptors of a ``(B, C, H, W)`` batch as a block map ``(B, b*b*orientations, R, Q)``.

    Steps, as in scikit-image: central-difference gradients (zero on the border rows/columns),
    per pixel the channel of largest magnitude, unsigned orientation in [0, 180) degrees binned
    into ``orientations`` equal bins (hard assignment), per cell the mean magnitude of each bin,
    then every ``block x block`` window of cells (stride one cell) normalised with L2-Hys
    (L2, clip at 0.2, L2 again; ``eps`` as skimage). Rows and columns beyond a whole number of
    cells are ignored. No parameters: the map is a fixed function of the input.
    """

    def __init__(self, orientations: int = 9, cell: int = 8, block: int = 2, eps: float = 1e-5) -> None:
        """Set the number of orientation bins, the cell side in pixels and the block side in cells."""
        super().__init__()
        for label, v in (("orientations", orientations), ("cell", cell), ("block", block)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HOG {label} must be a positive int, got {v!r}")
        self.orientations, self.cell, self.block, self.eps = orientations, cell, block, float(eps)

    @property
    def out_channels(self) -> int:
        """Channels of the block map: ``block * block * orientations``."""
        return self.block * self.block * self.orientations

    def min_input_size(self) -> int:
        """Smallest side that holds one block: ``block * cell`` pixels."""
        return self.block * self.cell

    def grid(self, size: int) -> int:
        """Blocks along a side of ``size`` pixels."""
        return size // self.cell - self.block + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-Hys-normalised block map of ``x``."""
        if x.ndim != 4:
            raise ValueError(f"HOG expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if min(h, w) < self.min_input_size():
            raise ValueError(f"HOG needs images of at least {self.min_input_size()} px "
                             f"(block {self.block} x cell {self.cell}), got {h}x{w}")
        g_row = torch.zeros_like(x)
        g_col = torch.zeros_like(x)
        g_row[..., 1:-1, :] = x[..., 2:, :] - x[..., :-2, :]
        g_col[..., :, 1:-1] = x[..., :, 2:] - x[..., :, :-2]
        mag = torch.hypot(g_row, g_col)
        if x.shape[1] > 1:  # skimage: the channel with the largest magnitude, first on ties
            idx = mag.argmax(dim=1, keepdim=True)
            g_row, g_col, mag = (t.gather(1, idx) for t in (g_row, g_col, mag))
        # Orientation in degrees, [0, 180); bin i holds [i, i + 1) * 180 / orientations.
        ori = torch.rad2deg(torch.atan2(g_row, g_col)).remainder(180.0)
        bins = torch.div(ori, 180.0 / self.orientations, rounding_mode="floor").long()
        bins = bins.clamp_(0, self.orientations - 1)
        hist = F.one_hot(bins[:, 0], self.orientations).permute(0, 3, 1, 2).to(mag.dtype) * mag
        rows, cols = (h // self.cell) * self.cell, (w // self.cell) * self.cell
        cells = F.avg_pool2d(hist[..., :rows, :cols], self.cell)  # (B, n, cells_r, cells_c)
        b = self.block
        blocks = cells.unfold(2, b, 1).unfold(3, b, 1)  # (B, n, R, Q, b, b)
        blocks = blocks.permute(0, 2, 3, 4, 5, 1)  # (B, R, Q, b, b, n): skimage's order
        blocks = _l2(blocks, self.eps).clamp(max=0.2)
        blocks = _l2(blocks, self.eps)
        n_b, r, q = blocks.shape[0], blocks.shape[1], blocks.shape[2]
        return blocks.reshape(n_b, r, q, -1).permute(0, 3, 1, 2).contiguous()


def _l2(blocks: torch.Tensor, eps: float) -> torch.Tensor:
    """Divide each block ``(..., b, b, n)`` by ``sqrt(sum(block**2) + eps**2)``."""
    norm = torch.sqrt(blocks.pow(2).sum(dim=(-3, -2, -1), keepdim=True) + eps * eps)
    return blocks / norm


class HogMLP(ClassifierModel):
    """HOG block map -> adaptive average pool to ``grid x grid`` blocks -> flatten -> linear(hidden)
    -> ReLU -> dropout -> linear(K).

    At the size the grid was chosen for (64 px with 8 px cells and 2-cell blocks: 7 x 7) the pool
    is the identity and the MLP sees skimage's whole HOG vector; other sizes are pooled to it.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, *, orientations: int = 9, cell: int = 8,
                 block: int = 2, grid: int = 7, hidden: int = 1024, dropout: float = 0.5) -> None:
        """Build the HOG extractor and the MLP head."""
        hog = HOG(orientations, cell, block)
        for label, v in (("grid", grid), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"hog_mlp {label} must be a positive int, got {v!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"hog_mlp dropout must be in [0, 1), got {dropout}")
        head = nn.Sequential(
            nn.AdaptiveAvgPool2d(grid),
            nn.Flatten(),
            nn.Linear(hog.out_channels * grid * grid, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        super().__init__(
            nn.Sequential(hog),
            head,
            name="hog_mlp",
            in_channels=in_channels,
            num_classes=num_classes,
            feature_channels=hog.out_channels,
            cam_layer="features",
            min_input_size=hog.min_input_size(),
        )
        # Kaiming-uniform with a ReLU gain for the hidden layer (PyTorch's default is for leaky 5**0.5)
        nn.init.kaiming_uniform_(head[2].weight, a=0.0, nonlinearity="relu")
        nn.init.zeros_(head[2].bias)
        bound = 1.0 / math.sqrt(hidden)
        nn.init.uniform_(head[5].weight, -bound, bound)
        nn.init.zeros_(head[5].bias)


@register(MODELS, "hog_mlp", "Dalal, Triggs. Histograms of Oriented Gradients for Human Detection. CVPR 2005")
def hog_mlp(in_channels: int, num_classes: int, *, orientations: int = 9, cell: int = 8, block: int = 2,
            grid: int = 7, hidden: int = 1024, dropout: float = 0.5) -> ClassifierModel:
    """HOG features and an MLP head; see :class:`HogMLP`."""
    return HogMLP(in_channels, num_classes, orientations=orientations, cell=cell, block=block, grid=grid,
                  hidden=hidden, dropout=dropout)
