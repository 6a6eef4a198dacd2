"""Run an AOTInductor package in a fresh Python process, as a deployment would: the proof that it loads without
fsgan_fast (reference/triton lowerings) or with only its ops registered (native lowering)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

_CHILD = textwrap.dedent(
    """
    import sys, torch
    if sys.argv[4] == "ops":
        import fsgan_fast.ops  # registers the kernels, nothing else
        allowed = ("fsgan_fast.models", "fsgan_fast.export")
    else:
        allowed = ("fsgan_fast",)
    package, inputs, outputs = sys.argv[1:4]
    runner = torch._inductor.aoti_load_package(package)
    out = runner(*torch.load(inputs))
    loaded = [m for m in sys.modules if m.startswith(allowed)]
    assert not loaded, f"the package must not need {allowed}: loaded {loaded[:3]}"
    torch.save(out, outputs)
    print(runner.get_metadata()["fsgan_fast.lowering"])
    """
)


def run_in_child(package: str | Path, inputs: tuple, scratch: Path, *,
                 with_ops: bool = False) -> tuple[torch.Tensor, str]:
    """``(first output, the package's lowering)`` of ``package`` run on ``inputs`` in a child process that imports
    nothing of fsgan_fast, or only ``fsgan_fast.ops`` with ``with_ops``; fails the test with the child's stderr."""
    torch.save(inputs, scratch / "in.pt")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(package), str(scratch / "in.pt"), str(scratch / "out.pt"),
                           "ops" if with_ops else "bare"], capture_output=True, text=True, cwd=scratch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = torch.load(scratch / "out.pt")
    return (out[0] if isinstance(out, (list, tuple)) else out), proc.stdout.strip().splitlines()[-1]
