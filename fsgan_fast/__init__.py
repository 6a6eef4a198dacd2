"""fsgan_fast: few-shot and single-image GANs with fused Triton/CUDA hot paths."""

from fsgan_fast import ops  # defines the op schemas before the extension registers kernels for them
from fsgan_fast import _ext

_ext.load()

from fsgan_fast import nn  # noqa: E402
from fsgan_fast.backends import (  # noqa: E402
    BackendUnavailableError,
    format_info,
    last_backend,
    set_backend,
    use_backend,
)
from fsgan_fast.backends import info as _info  # noqa: E402


def load(path, device="cpu"):
    """The model of any fsgan_fast checkpoint, chosen by its ``model`` field, in eval mode on ``device``."""
    from fsgan_fast.models.registry import load as _load

    return _load(path, device)


def info(print_out: bool = False) -> dict:
    """Versions, devices, which backends built and which each op uses; prints a table if asked."""
    data = _info()
    if print_out:
        print(format_info(data))
    return data


__all__ = ["ops", "nn", "load", "info", "format_info", "set_backend", "use_backend", "last_backend", "BackendUnavailableError"]
