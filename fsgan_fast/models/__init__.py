"""fsgan_fast.models: one module per paper (networks, inference graph, registry spec); no training loops.

``available()`` lists the registered models (built-in and plugins of the ``fsgan_fast.models`` entry-point
group); ``get(name)`` returns a :class:`ModelSpec`; ``load(path)`` builds the model of any checkpoint.
"""

from fsgan_fast.models.registry import ModelSpec, available, get, load, register, unregister
from fsgan_fast.models.lofgan import (  # noqa: E402  (registers "lofgan")
    LoFGAN,
    LoFGANConfig,
    LoFGANDiscriminator,
    LoFGANGenerator,
    similarity_figure,
)
from fsgan_fast.models.fastgan import FastGAN, FastGANConfig  # noqa: E402  (registers "fastgan")
from fsgan_fast.models.singan import SinGAN, SinGANConfig  # noqa: E402  (registers "singan")
from fsgan_fast.models.opgan import OPGAN, OPGANConfig  # noqa: E402  (registers "opgan")
from fsgan_fast.models.matchgan import MatchGAN, MatchGANConfig  # noqa: E402  (registers "matchgan")
from fsgan_fast.models.smis import SMIS, SMISConfig  # noqa: E402  (registers "smis")

__all__ = ["ModelSpec", "available", "get", "load", "register", "unregister", "LoFGAN", "LoFGANConfig",
           "LoFGANGenerator", "LoFGANDiscriminator", "similarity_figure", "FastGAN", "FastGANConfig", "SinGAN",
           "SinGANConfig", "OPGAN", "OPGANConfig", "MatchGAN", "MatchGANConfig", "SMIS", "SMISConfig"]
