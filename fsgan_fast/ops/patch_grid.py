"""OP-GAN's patch grids: every image cut into ``grid x grid`` cells, and the Siamese network's patch pairs.

``patch_grid(x[B,C,H,W], grid=3, out=(h,w) | None) -> [B, grid*grid, C, h, w]``

No kernel of its own: it is :func:`fsgan_fast.ops.crop_resize.crop_resize_indexed` over the cells of
:func:`grid_boxes`, every cell of every image in ONE launch (``image_index = arange(B)`` repeated per cell), with
that op's bilinear sampling, edge handling, dtypes, gradients (to ``x``, by scatter-add) and backends.

1. Cell edges: row edge ``i`` (``0 <= i <= grid``) is ``floor(i * H / grid + 0.5)``, computed exactly in integers as
   ``(2*i*H + grid) // (2*grid)``; the same for columns with W. Halves round up (not Python's ``round``, which rounds
   halves to even), so the result does not depend on the parity of a quotient. H and W need not divide by grid:
   10 rows in 3 cells give edges 0, 3, 7, 10 (heights 3, 4, 3).
2. Cells are in row-major order: cell ``k = gy * grid + gx`` spans rows ``[edge_y[gy], edge_y[gy+1])`` and columns
   ``[edge_x[gx], edge_x[gx+1])``.
3. ``out=None`` keeps the cell size ``(H // grid, W // grid)``, allowed only when ``grid`` divides H and W (a
   ValueError otherwise says to pass ``out=``); the result is then exactly the slices. With ``out=(h, w)`` every cell
   is resized bilinearly to ``out``; a cell whose own size is ``out`` is still an exact copy of its slice. The
   resize samples the image, not the cut-out cell: near a cell's inner border the bilinear neighbours may lie in
   the next cell (as roi_align does), where ``F.interpolate`` of the sliced cell would repeat the cell's edge; at
   the image's own border both clamp.

``sample_patch_pairs(batch, grid, pairs, generator, device) -> PatchPairs`` draws the index pairs of OP-GAN's
Siamese patch discriminator over ``torch.cat([src.flatten(0, 1), trans.flatten(0, 1)])`` of two ``patch_grid``
outputs (see :class:`PatchPairs`).

Errors (ValueError/TypeError naming the argument): x not a floating ``[B,C,H,W]`` tensor, ``grid`` not an int >= 1
(>= 2 for pairs), H or W smaller than grid, ``out`` not two ints >= 1, ``out=None`` with uneven cells, ``batch`` or
``pairs`` not >= 1, a generator that is not a CPU ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fsgan_fast.ops import _common

_crop = importlib.import_module("fsgan_fast.ops.crop_resize")  # the module: the package's names are functions

# the four pair scenarios of OP-GAN's Siamese network, in the order of PatchPairs.scenario, and their 3-way class
D1_SOURCE, D2_TRANSLATION, C1_SAME_CELL, C2_OTHER_CELL = 0, 1, 2, 3
SCENARIO_LABELS = (0, 1, 2, 2)

# ---------------------------------------------------------------------------------------------------
# Geometry


def _check_grid(grid, name: str = "grid", low: int = 1) -> int:
    if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool):
        raise TypeError(f"{name} must be an int, got {type(grid).__name__}")
    if grid < low:
        raise ValueError(f"{name} must be >= {low}, got {grid}")
    return int(grid)


def grid_edges(n: int, grid: int) -> list[int]:
    """The ``grid + 1`` cell edges of a side of ``n`` pixels: ``floor(i * n / grid + 0.5)`` (see the module
    docstring)."""
    return [(2 * i * n + grid) // (2 * grid) for i in range(grid + 1)]


def grid_cells(H: int, W: int, grid: int = 3) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` integer edges of every cell, row-major: ``x[..., y0:y1, x0:x1]`` is cell ``k``."""
    ys, xs = grid_edges(H, grid), grid_edges(W, grid)
    return [(ys[gy], xs[gx], ys[gy + 1], xs[gx + 1]) for gy in range(grid) for gx in range(grid)]


def _check_size(H, W, grid: int) -> tuple[int, int]:
    for name, n in (("H", H), ("W", W)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
            raise TypeError(f"{name} must be an int, got {type(n).__name__}")
        if n < grid:
            raise ValueError(f"{name}={n} is smaller than grid={grid}: some cells would be empty")
    return int(H), int(W)


def grid_boxes(H: int, W: int, grid: int = 3, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
    """``[grid*grid, 4]`` boxes ``(y0, x0, y1, x1)`` (pixel-edge units, as :func:`crop_resize` takes them) of the
    cells of an ``H x W`` image, row-major; edges as in the module docstring."""
    grid = _check_grid(grid)
    H, W = _check_size(H, W, grid)
    return torch.tensor(grid_cells(H, W, grid), dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _cached_plan(batch: int, H: int, W: int, grid: int, device: torch.device, dtype: torch.dtype):
    return _plan(batch, H, W, grid, device, dtype)


def _plan(batch: int, H: int, W: int, grid: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The boxes ``[B*grid*grid, 4]`` of every cell of every image and their ``image_index`` (b repeated per cell)."""
    cells = grid * grid
    boxes = torch.tensor(grid_cells(H, W, grid), dtype=dtype, device=device).repeat(batch, 1)
    image_index = torch.arange(batch, device=device).repeat_interleave(cells)
    return boxes, image_index


def patch_grid(x: Tensor, grid: int = 3, out: Sequence[int] | None = None, *, backend: str | None = None) -> Tensor:
    """The ``grid x grid`` cells of every image of ``x [B,C,H,W]``, resized to ``out = (h, w)`` (or kept at their
    size when ``out`` is None and grid divides H and W): ``[B, grid*grid, C, h, w]``, row-major cells, one launch
    (see the module docstring). Differentiable with respect to ``x``."""
    _common.check_float("x", x)
    _common.check_rank("x", x, ("B", "C", "H", "W"))
    if x.numel() == 0:
        raise ValueError(f"x must have no empty dimension, got shape {list(x.shape)}")
    grid = _check_grid(grid)
    B, C, H, W = x.shape
    H, W = _check_size(H, W, grid)
    if out is None:
        if H % grid or W % grid:
            raise ValueError(f"x's {H}x{W} cells are uneven with grid={grid} (cell edges "
                             f"{grid_edges(H, grid)} x {grid_edges(W, grid)}): pass out=(h, w), the size to resize "
                             "every cell to")
        size = (H // grid, W // grid)
    else:
        size = _crop._check_out(out)
    acc = _common.opmath(x.dtype)
    # cached in eager mode (no host-to-device copy per call, so CUDA-graph capture after a warm-up call works);
    # built from constants while tracing
    plan = _plan if torch.compiler.is_compiling() else _cached_plan
    boxes, image_index = plan(B, H, W, grid, x.device, acc)
    cells = _crop.run(x, boxes, image_index, size, backend)
    return cells.view(B, grid * grid, C, *size)


# ---------------------------------------------------------------------------------------------------
# OP-GAN's Siamese pairs


@dataclasses.dataclass(frozen=True)
class PatchPairs:
    """Index pairs for OP-GAN's Siamese patch network, all int64 ``[N]`` (``same_cell`` bool), N = 4 * pairs * batch.

    Indices are flat into ``torch.cat([src.flatten(0, 1), trans.flatten(0, 1)])`` of two ``patch_grid`` outputs
    ``[B, G, ...]`` (G = grid*grid): source patch ``(b, k)`` is ``b*G + k``, translated patch ``(b, k)`` is
    ``B*G + b*G + k``. Entries are ordered by image, then scenario, then draw: entry ``(b*4 + s) * pairs + p``.

    - ``scenario``: 0 = D1, both patches from the source image, different cells; 1 = D2, both from the translation,
      different cells; 2 = C1, source and translation at the same cell; 3 = C2, source and translation at different
      cells. Both patches of a pair always come from one image ``b`` and its translation.
    - ``label``: the 3-way class, D1 -> 0, D2 -> 1, C1 and C2 -> 2.
    - ``same_cell``: whether both patches are the same cell (C1 only).
    """

    first: Tensor
    second: Tensor
    scenario: Tensor
    label: Tensor
    same_cell: Tensor

    def __len__(self) -> int:
        return int(self.first.shape[0])


def _check_count(value, name: str, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def sample_patch_pairs(batch: int, grid: int = 3, pairs: int = 4, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> PatchPairs:
    """Draw ``pairs`` pairs of each of the 4 scenarios per image (see :class:`PatchPairs`) on the host with
    ``generator`` (the same seed gives the same pairs), then move them to ``device``.

    Cells are uniform; a pair of different cells draws its first cell uniformly and the second uniformly among the
    other ``grid*grid - 1``.
    """
    batch = _check_count(batch, "batch", 1)
    grid = _check_count(grid, "grid", 2)
    pairs = _check_count(pairs, "pairs", 1)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU generator (pairs are drawn on the host), got one on "
                             f"{generator.device}")
    G = grid * grid
    shape = (batch, 4, pairs)
    first_cell = torch.randint(G, shape, generator=generator)
    # a different cell, uniform among the other G-1: an offset of 1..G-1 around the ring of cells
    other_cell = (first_cell + 1 + torch.randint(G - 1, shape, generator=generator)) % G
    scenario = torch.arange(4).view(1, 4, 1).expand(shape)
    same = scenario == C1_SAME_CELL
    second_cell = torch.where(same, first_cell, other_cell)
    image = torch.arange(batch).view(batch, 1, 1) * G
    translated = batch * G
    first = image + first_cell + torch.where(scenario == D2_TRANSLATION, translated, 0)
    second = image + second_cell + torch.where(scenario == D1_SOURCE, 0, translated)
    label = torch.tensor(SCENARIO_LABELS)[scenario]
    return PatchPairs(*(t.reshape(-1).to(device) for t in (first, second, scenario, label, same)))


__all__ = [
    "patch_grid",
    "grid_boxes",
    "grid_edges",
    "grid_cells",
    "sample_patch_pairs",
    "PatchPairs",
    "SCENARIO_LABELS",
]
