"""fsgan_fast.models: one module per paper; generators and discriminators only (no training loops)."""

from fsgan_fast.models.lofgan import (
    LoFGAN,
    LoFGANConfig,
    LoFGANDiscriminator,
    LoFGANGenerator,
    similarity_figure,
)

__all__ = ["LoFGAN", "LoFGANConfig", "LoFGANGenerator", "LoFGANDiscriminator", "similarity_figure"]
