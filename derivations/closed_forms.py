"""The proven expressions, lambdified: ``from softmaxlab.derivations import closed_forms``.

Each attribute is a :class:`~softmaxlab.derivations._closed_form.ClosedForm` built from the
very SymPy expression a page of the proof book proves (its ``page`` attribute says which),
callable on NumPy arrays with classes (features) on the last axes and any leading batch
axes, float64 out::

    >>> import numpy as np
    >>> from softmaxlab.derivations import closed_forms
    >>> closed_forms.softmax(np.array([0.0, 0.0]))
    array([0.5, 0.5])
    >>> closed_forms.cross_entropy_gradient(np.array([0.0, 0.0]), np.array([1.0, 0.0]))
    array([-0.5,  0.5])

They are test oracles for the kernels (``cross_entropy``, ``distillation_loss``,
``margin_cross_entropy``, ...), not fast paths: a vector output costs O(K^2) array
operations, and there are no overflow guards (shift logits first, as the
shift-invariance statements allow).  ``names()`` lists them; ``get(name)`` returns one.
Building one runs ``sympy.lambdify`` once (cached); no proof is run.
"""

from __future__ import annotations

import importlib

from . import _closed_form

# import the family modules for their registrations, without binding their names here
# (``closed_forms.softmax`` must be the closed form, not the module)
for _family in ("softmax", "cross_entropy", "distillation", "linear_cross_entropy", "margins", "bounds"):
    importlib.import_module(f"{__package__}.{_family}")
del _family

__all__ = ["get", "names"]


def get(name: str) -> _closed_form.ClosedForm:
    """The closed form registered as ``name``."""
    return _closed_form.get(name)


def names() -> list:
    """The names of all closed forms, sorted."""
    return _closed_form.names()


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return _closed_form.get(name)
    except KeyError as error:
        raise AttributeError(str(error)) from None


def __dir__():
    return sorted(set(globals()) | set(_closed_form.names()))
