"""Figures drawn from model outputs (no plotting library: tensors in, an RGB tensor out).

:func:`similarity_figure` renders LoFGAN's similarity maps (paper section 4.5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _jet(v: Tensor) -> Tensor:
    """[H, W] values in [0, 1] -> [3, H, W] RGB of a jet-like colormap (blue low, red high)."""
    v = v.clamp(0, 1)
    return torch.stack([(1.5 - (4 * v - c).abs()).clamp(0, 1) for c in (3.0, 2.0, 1.0)])


def _to_unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> float32 CPU in [0, 1]."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)


def _outline(img: Tensor, cell: int, row: int, col: int, color: tuple[float, float, float], width: int = 2) -> Tensor:
    """Draw a ``width``-px box around grid cell (row, col) of side ``cell`` on ``img [3, H, W]`` (in place)."""
    c = torch.tensor(color, dtype=img.dtype, device=img.device).view(3, 1, 1)
    y0, x0 = row * cell, col * cell
    y1, x1 = y0 + cell, x0 + cell
    w = max(1, min(width, cell // 2))
    img[:, y0:y1, x0 : x0 + w] = c
    img[:, y0:y1, x1 - w : x1] = c
    img[:, y0 : y0 + w, x0:x1] = c
    img[:, y1 - w : y1, x0:x1] = c
    return img


def similarity_figure(shots: Tensor, maps: dict[str, Any], *, num_positions: int = 4, pad: int = 4) -> Tensor:
    """Render :meth:`LoFGAN.similarity_maps` as one image ``[3, H, W]`` float in [0, 1] (on the CPU).

    Layout: K + 1 columns (the shots in order, then the fake). Row 0 shows the shots (the base framed in
    red) and the fake. Each further row follows one selected base position t (the first
    ``num_positions``): the base column outlines the cell in green, each reference column shows that
    reference under a heat map of ``maps[r, t]`` (jet colours, min-max scaled per map, cells upsampled
    with nearest) with the matched cell outlined in white, and the fake column outlines the cell that
    received the fused feature. Tiles are separated by ``pad`` white pixels.

    ``shots [K, 3, S, S]`` in [-1, 1]. To save without torchvision::

        from PIL import Image
        fig = similarity_figure(shots, model.similarity_maps(shots, g))
        Image.fromarray((fig.permute(1, 2, 0) * 255).round().byte().numpy()).save("similarity.png")
    """
    if not isinstance(shots, Tensor) or shots.dim() != 4 or shots.shape[1] != 3:
        raise ValueError(f"shots must be [K, 3, S, S], got {getattr(shots, 'shape', type(shots).__name__)}")
    for key in ("maps", "base", "ref_shots", "positions", "ref_idx", "fake"):
        if key not in maps:
            raise ValueError(f"maps must be the dict from LoFGAN.similarity_maps; missing {key!r}")
    K, _, S, _ = shots.shape
    sim = maps["maps"].detach().float().cpu()
    R, n, h, w = sim.shape
    if R != K - 1 or S % h or S % w or h != w:
        raise ValueError(f"maps {list(sim.shape)} do not fit {K} shots of side {S}")
    cell = S // h
    m = max(0, min(num_positions, n))
    imgs, fake = _to_unit(shots), _to_unit(maps["fake"])
    base, ref_shots = int(maps["base"]), maps["ref_shots"].tolist()
    positions, ref_idx = maps["positions"].cpu().tolist(), maps["ref_idx"].cpu()

    rows, cols = 1 + m, K + 1
    fig = torch.ones(3, pad + rows * (S + pad), pad + cols * (S + pad))

    def put(tile: Tensor, r: int, c: int) -> None:
        y, x = pad + r * (S + pad), pad + c * (S + pad)
        fig[:, y : y + S, x : x + S] = tile

    for k in range(K):
        put(_outline(imgs[k].clone(), S, 0, 0, (1.0, 0.0, 0.0), 3) if k == base else imgs[k], 0, k)
    put(fake, 0, K)
    for t in range(m):
        p = positions[t]
        put(_outline(imgs[base].clone(), cell, p // w, p % w, (0.0, 1.0, 0.0)), 1 + t, base)
        for r, shot in enumerate(ref_shots):
            v = sim[r, t]
            v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-8)
            heat = _jet(v.repeat_interleave(cell, 0).repeat_interleave(cell, 1))
            tile = 0.5 * imgs[shot] + 0.5 * heat
            j = int(ref_idx[r, t])
            put(_outline(tile, cell, j // w, j % w, (1.0, 1.0, 1.0)), 1 + t, shot)
        put(_outline(fake.clone(), cell, p // w, p % w, (0.0, 1.0, 0.0)), 1 + t, K)
    return fig


__all__ = ["similarity_figure"]
