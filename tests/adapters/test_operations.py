"""The adapters' table against softmaxlab.kernels, and softmaxlab.kernels without torch or JAX."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest

from softmaxlab import kernels
from softmaxlab.adapters.operations import ARRAY, NUMPY_ONLY, OPERATIONS, OPTIONAL_ARRAY


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.name)
def test_the_table_follows_the_kernel_signatures(operation):
    parameters = operation.signature.parameters
    assert [argument.name for argument in operation.arguments] == list(parameters)
    for argument in operation.arguments:
        if argument.kind == OPTIONAL_ARRAY:
            assert parameters[argument.name].default is None
    arrays = [argument.name for argument in operation.arguments if argument.kind in (ARRAY, OPTIONAL_ARRAY)]
    assert set(operation.differentiable) <= set(arrays)
    assert (operation.fused is not None) == hasattr(kernels, f"{operation.name}_forward_backward")


@pytest.mark.parametrize("operation", [operation for operation in OPERATIONS
                                       if set(NUMPY_ONLY) & set(inspect.signature(operation.value).parameters)],
                         ids=lambda operation: operation.name)
def test_the_adapters_refuse_the_numpy_only_keywords(operation):
    # softmax(x, out=...) writes into a NumPy array; the adapters' calls bind without it
    for name in NUMPY_ONLY:
        with pytest.raises(TypeError, match=name):
            operation.bind((), {**{argument.name: None for argument in operation.arguments}, name: None})


def test_kernels_import_without_torch_or_jax():
    """softmaxlab.kernels and the table work with torch and JAX unimportable; the adapters
    then raise ImportError."""
    script = textwrap.dedent("""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "jax", "jaxlib"):
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, Blocked())
        import numpy as np
        import softmaxlab.kernels
        import softmaxlab.adapters.operations
        print(softmaxlab.kernels.logsumexp(np.zeros(2)))
        for adapter in ("softmaxlab.torch", "softmaxlab.jax"):
            try:
                __import__(adapter)
            except ImportError:
                print(adapter, "ImportError")
        assert not any(name.split(".")[0] in ("torch", "jax") for name in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.6931471805599453", "softmaxlab.torch", "ImportError",
                                     "softmaxlab.jax", "ImportError"]
