"""softmaxlab.derivations: SymPy derivations that check every gradient and bound the kernels use.

One module per family (``softmax``, ``cross_entropy``, ``distillation``,
``linear_cross_entropy``, ``margins``, ``bounds``); each derivation states its claim in
SymPy, derives it, checks every step (identities simplify to zero; inequalities follow
from lemmas whose hypotheses SymPy verifies) and returns a :class:`Derivation` record.
``book.derive_all()`` runs them all; ``softmaxlab derive`` writes the proof book
``docs/proofs/``.  The proven expressions are available lambdified for tests:
``from softmaxlab.derivations import closed_forms``.
"""

from __future__ import annotations

__all__ = ["derive_all", "Derivation", "closed_forms"]


def __getattr__(name: str):
    # lazy, so that importing the package does not import SymPy
    if name == "derive_all":
        from .book import derive_all

        return derive_all
    if name == "Derivation":
        from ._proof import Derivation

        return Derivation
    if name == "closed_forms":
        import importlib

        return importlib.import_module(".closed_forms", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
