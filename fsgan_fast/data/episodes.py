"""k-shot episodes: B rows, each K distinct images of one random class, drawn in one gather."""

from __future__ import annotations

import torch
from torch import Tensor

from fsgan_fast.data.types import ImageClasses


def to_model_range(images: Tensor) -> Tensor:
    """uint8 images to float32 in [-1, 1] (LoFGAN's ToTensor + Normalize(0.5, 0.5))."""
    return images.float().div_(127.5).sub_(1.0)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` (the current device, index None) and ``cuda:0`` are the same device when 0 is current."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or (a.index is not None and b.index is not None):
        return a.index == b.index
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


class EpisodeSampler:
    """Draws ``(xs [B, K, 3, S, S] float32 in [-1, 1], labels [B] int64)`` from ``data``.

    Every draw comes from ``generator`` (a seeded ``torch.Generator`` on the data's device, created
    from ``seed`` unless given), so a run replays exactly and its state can be checkpointed. Unlike
    the official code, which reseeds numpy with the item index and so replays the same episodes every
    epoch, every episode here is fresh. Classes are drawn uniformly; the K images of a row are distinct.
    ``flip=True`` mirrors each image horizontally with probability 1/2 (off by default, as officially).
    """

    def __init__(
        self,
        data: ImageClasses,
        batch: int,
        shots: int,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
        flip: bool = False,
    ):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if shots < 1:
            raise ValueError(f"shots must be >= 1, got {shots}")
        data.check_shots(shots)
        self.data = data
        self.batch = batch
        self.shots = shots
        self.flip = flip
        if generator is None:
            generator = torch.Generator(data.device).manual_seed(seed)
        elif not _same_device(generator.device, data.device):
            raise ValueError(f"generator is on {generator.device} but the data is on {data.device}")
        self.generator = generator
        self._offsets = data.offsets
        self._max_count = int(data.counts.max())

    def sample(self) -> tuple[Tensor, Tensor]:
        B, K, g, dev = self.batch, self.shots, self.generator, self.data.device
        labels = torch.randint(self.data.num_classes, (B,), generator=g, device=dev)
        # K distinct images per row without a host loop: the K smallest of random keys, where the keys
        # of slots beyond the class's image count are pushed above every valid key
        keys = torch.rand(B, self._max_count, generator=g, device=dev)
        invalid = torch.arange(self._max_count, device=dev) >= self.data.counts[labels].unsqueeze(1)
        local = keys.masked_fill_(invalid, 2.0).topk(K, dim=1, largest=False).indices
        xs = to_model_range(self.data.images[self._offsets[labels].unsqueeze(1) + local])
        if self.flip:
            mirror = torch.rand(B, K, 1, 1, 1, generator=g, device=dev) < 0.5
            xs = torch.where(mirror, xs.flip(-1), xs)
        return xs, labels

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


__all__ = ["EpisodeSampler", "to_model_range"]
