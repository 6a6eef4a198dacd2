"""Backend selection: precedence, errors naming what is missing, last_backend, info()."""

import subprocess
import sys

import pytest
import torch

import fsgan_fast
from fsgan_fast import backends
from fsgan_fast.ops import lfm_fuse

from tests.ops import kit
from tests.ops.test_lfm import make_inputs


def _call(**kw):
    lfm_fuse(*make_inputs(1, 2, 3, 2, 2, 2), **kw)
    return fsgan_fast.last_backend("lfm_fuse")


def test_precedence_per_call_over_context_over_global_over_env(monkeypatch):
    monkeypatch.setenv("FSGAN_FAST_BACKEND", "reference")
    assert backends.requested_backend() == "reference"
    fsgan_fast.set_backend("auto")
    assert backends.requested_backend() == "auto"
    fsgan_fast.set_backend("reference")
    with fsgan_fast.use_backend("auto"):
        assert backends.requested_backend() == "auto"
        with fsgan_fast.use_backend("reference"):
            assert backends.requested_backend() == "reference"
            assert backends.requested_backend("auto") == "auto"
        assert backends.requested_backend() == "auto"
    assert backends.requested_backend() == "reference"
    assert _call() == "reference"


def test_auto_on_cpu_prefers_the_extension():
    expected = "cpu" if backends.why_unavailable("lfm_fuse", "cpu", torch.device("cpu")) is None else "reference"
    assert _call() == expected


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        fsgan_fast.set_backend("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        _call(backend="gpu")


def test_forcing_unavailable_backend_names_what_is_missing():
    # CUDA kernels can never run on CPU tensors
    with pytest.raises(fsgan_fast.BackendUnavailableError, match="'cuda' backend needs CUDA tensors"):
        _call(backend="cuda")
    with fsgan_fast.use_backend("cuda"), pytest.raises(fsgan_fast.BackendUnavailableError, match="lfm_fuse"):
        _call()


def test_triton_on_cpu_requires_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = backends.why_unavailable("lfm_fuse", "triton", torch.device("cpu"))
    assert reason is not None and "TRITON_INTERPRET=1" in reason or "not installed" in reason
    assert "float64" in backends.why_unavailable("lfm_fuse", "triton", torch.device("cuda"), torch.float64) or (
        not backends.triton_installed()
    )


@pytest.mark.parametrize(
    "triton_version, numpy_version, broken",
    [("3.6.0", "2.4.1", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.1", False), ("3.8.0+git1234", "2.5.0", False),
     ("3.5.1", "2.4.0rc1", True)],
)
def test_triton_interpreter_problem_names_the_fix(monkeypatch, triton_version, numpy_version, broken):
    versions = {"triton": triton_version, "numpy": numpy_version}
    monkeypatch.setattr(backends._ext, "module_version", versions.get)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    problem = backends.triton_interpreter_problem()
    assert (problem is not None) == broken
    if broken:
        assert "numpy<2.4" in problem and triton_version in problem
        if backends.triton_installed():
            for device in ("cpu", "cuda"):  # with TRITON_INTERPRET=1 even CUDA tensors are interpreted
                assert backends.why_unavailable("lfm_fuse", "triton", torch.device(device)) == problem
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            assert backends.why_unavailable("lfm_fuse", "triton", torch.device("cuda")) is None


def test_disabled_extension_degrades_to_reference():
    code = (
        "import warnings, torch, fsgan_fast\n"
        "from fsgan_fast.ops import lfm_fuse\n"
        "x = torch.randn(1, 2, 3, 2, 2); b = torch.tensor([0]); p = torch.tensor([[1, 3]]); a = torch.full((1, 2), .5)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always'); lfm_fuse(x, b, p, a)\n"
        "print(fsgan_fast.last_backend('lfm_fuse'), fsgan_fast.info()['extension']['loaded'], len(w))\n"
        "try:\n    lfm_fuse(x, b, p, a, backend='cpu')\nexcept fsgan_fast.BackendUnavailableError as e:\n    print('ERR', e)\n"
    )
    env = {"FSGAN_FAST_DISABLE_EXT": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "reference False 1", out
    assert "fsgan_fast._C is not loaded" in lines[1] and "FSGAN_FAST_DISABLE_EXT" in lines[1]


def test_info_reports_every_op_and_device():
    data = fsgan_fast.info()
    assert data["torch"] == torch.__version__
    text = fsgan_fast.format_info(data)
    assert "extension fsgan_fast._C" in text
    assert set(data["ops"]) == set(backends.registered_ops()) and data["ops"]
    for op in backends.registered_ops():
        cell = data["ops"][op]["cpu"]
        assert cell["auto"] in ("cpu", "reference"), (op, cell)
        assert cell["backends"]["reference"] == "available", (op, cell)
        assert op in text


def test_registered_ops_match_their_native_schemas():
    """Each op's compiled backends have a private op defined in Python, and no private op is orphaned."""
    schemas = kit.native_schemas()
    wanted = set()
    for op in backends.registered_ops():
        spec = kit.op_spec(op)
        assert spec.name == op and "reference" in spec.backends, spec
        assert set(spec.backends) <= set(backends.BACKENDS), spec
        for dev in kit.NATIVE_DEVICES:
            if dev in spec.backends:
                assert spec.native, f"{op} lists the {dev!r} backend but names no native op"
                wanted.add(f"{spec.native}_{dev}")
        for name in spec.backends:  # every backend answers, available or not
            for device in ("cpu", "cuda"):
                reason = backends.why_unavailable(op, name, torch.device(device))
                assert reason is None or isinstance(reason, str) and reason, (op, name, device, reason)
    assert wanted <= set(schemas), f"ops list compiled backends without a schema: {sorted(wanted - set(schemas))}"
    assert set(schemas) <= wanted, f"private ops no registered op uses: {sorted(set(schemas) - wanted)}"
