"""An EMA copy of a model's generator: the shared part of every GAN wrapper that keeps one."""

from __future__ import annotations

import copy

from torch import nn


class WithEMAGenerator:
    """Mixin for an ``nn.Module`` holding its generator as ``gen``: an optional EMA copy ``gen_ema`` (None until
    :meth:`enable_ema`) that stays in eval mode through ``.train()``; loading a state dict that holds
    ``gen_ema.*`` keys enables it first. List it before ``nn.Module``: ``class M(WithEMAGenerator, nn.Module)``.
    The trainer updates it (:meth:`fsgan_fast.train.base.GANTrainer.update_ema`)."""

    # set by the model's __init__ (``self.gen_ema = None``): a class-level default would shadow the submodule,
    # which nn.Module keeps in _modules and finds only through __getattr__
    gen: nn.Module
    gen_ema: nn.Module | None

    def enable_ema(self) -> None:
        """(Re)start the EMA generator as a deep copy of ``gen``: eval mode, no grad."""
        ema = copy.deepcopy(self.gen)
        ema.eval()
        ema.requires_grad_(False)
        self.gen_ema = ema

    def train(self, mode: bool = True):
        super().train(mode)
        if self.gen_ema is not None:
            self.gen_ema.eval()
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.gen_ema is None and any(k.startswith("gen_ema.") for k in state_dict):
            self.enable_ema()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def pick(self, use_ema: bool = True) -> nn.Module:
        """``gen_ema`` when ``use_ema`` and it exists, else ``gen``."""
        return self.gen_ema if use_ema and self.gen_ema is not None else self.gen


__all__ = ["WithEMAGenerator"]
