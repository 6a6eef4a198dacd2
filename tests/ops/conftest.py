"""Op-test fixtures. A test module sets ``OP = '<registered op>'`` and takes:

- ``backend``: a :class:`tests.ops.kit.Backend` for each backend of ``OP`` on its device (``reference-cpu``,
  ``cpu-cpu``, ``triton-cpu`` under the interpreter or ``triton-cuda``, ``cuda-cuda``, ...); one that cannot run
  here is skipped with the registry's reason. Call the op through ``backend.run(fn, ...)``, which asserts
  ``last_backend``; ``backend.require(dtype)`` skips dtypes the backend does not take.
- ``fp64_backend``: the backends gradcheck runs on (reference and cpu, on the CPU, float64).
"""

import pytest
import torch

from tests.ops import kit

_SELECTIONS = {
    "backend": {},
    "fp64_backend": {"names": kit.GRADCHECK_BACKENDS, "devices": ("cpu",)},
}


def pytest_generate_tests(metafunc):
    if not hasattr(metafunc.module, "OP"):
        return  # the fixtures below then say what is missing
    for fixture, selection in _SELECTIONS.items():
        if fixture in metafunc.fixturenames and fixture not in getattr(metafunc.module, "__dict__", {}):
            op = kit.module_op(metafunc.module)
            metafunc.parametrize(fixture, kit.backend_cases(op, **selection), ids=str, indirect=True)


def _param(request) -> kit.Backend:
    if not hasattr(request, "param"):
        raise pytest.UsageError(f"{request.module.__name__} uses the {request.fixturename!r} fixture: set "
                                "OP = '<registered op name>' in it")
    return request.param


@pytest.fixture
def backend(request) -> kit.Backend:
    return _param(request).require()


@pytest.fixture
def fp64_backend(request) -> kit.Backend:
    return _param(request).require(torch.float64)
