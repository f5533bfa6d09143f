"""The exact references, in one library: every value the accuracy runs compare against.

Two engines compute the same mathematics; both take the inputs exactly (a float32 or
float64 is an exact mpf or long double) and return
:class:`~softmaxlab.harness.metrics.Exact` pairs ``hi + lo``:

* ``"mpmath-50"`` (``engine.py``): mpmath at 50 significant digits, row by row through
  one row engine (``engine.MpRow``).  The ground truth; about 10 us per element, so it
  is used for small inputs.
* ``"longdouble"`` (``longdouble.py``): pairs of x87 80-bit long doubles built with
  error-free transformations, vectorized, for rows of 10^6 classes; checked against
  mpmath-50 by the tests and by every accuracy run (``reference_check.csv``).

``engine="auto"`` picks mpmath-50 up to :data:`MPMATH_MAX_ELEMENTS` input elements and
the long double engine above.  The references:

* ``normalizers.py``: :func:`softmax`, :func:`log_softmax`, :func:`logsumexp`,
  :func:`softmax_vjp`, :func:`log_softmax_vjp` (both engines), and the term magnitudes of
  the VJPs, :func:`softmax_vjp_scale` and :func:`log_softmax_vjp_scale` (float64 from the
  exact softmax: the condition-aware error of ``metrics.py``);
* ``losses.py``: ``exact_cross_entropy`` (both engines, long double for the default
  options), ``exact_distillation_loss``, ``exact_binary_cross_entropy_with_logits``,
  ``exact_quadratic_cost``, ``exact_multiclass_hinge``, ``exact_smooth_hinge``, and the
  term magnitudes of their gradients (``*_gradient_scale``; not the smooth hinge's);
* ``margins.py``: ``exact_normalized_linear``, ``exact_margin`` (and its per-row
  ``margin_rows_mp`` and per-target ``margin_target_mp``), ``exact_large_margin``,
  ``exact_center`` (mpmath only), and the term
  magnitudes of every gradient of the family (``normalized_linear_gradient_scales``,
  ``margin_gradient_scale``, ``large_margin_gradient_scales``, ``center_gradient_scales``);
* ``linear.py``: ``exact_linear_cross_entropy`` (mpmath: the logits x W^T + b as exact
  sums) and ``float64_linear_cross_entropy`` (float32 outputs at any size); the same pair for
  the fused margin loss, ``exact_linear_margin_cross_entropy`` (the margin references on exact
  cosines) and ``float64_linear_margin_cross_entropy``, and its gradients' term magnitudes
  ``linear_margin_gradient_scales``.
"""

from .engine import (
    ENGINES,
    LONGDOUBLE_ENGINE,
    LONGDOUBLE_IS_EXTENDED,
    MPMATH_DIGITS,
    MPMATH_ENGINE,
    MPMATH_MAX_ELEMENTS,
    MpRow,
    require_mpmath,
    resolve_engine,
    to_exact,
    to_mpf,
)
from .losses import (
    binary_cross_entropy_gradient_scale,
    exact_binary_cross_entropy_with_logits,
    cross_entropy_gradient_scale,
    distillation_gradient_scale,
    exact_cross_entropy,
    exact_distillation_loss,
    exact_multiclass_hinge,
    exact_quadratic_cost,
    exact_smooth_hinge,
    multiclass_hinge_gradient_scale,
    quadratic_cost_gradient_scale,
)
from .linear import (
    exact_linear_cross_entropy,
    exact_linear_margin_cross_entropy,
    float64_linear_cross_entropy,
    float64_linear_margin_cross_entropy,
    linear_margin_gradient_scales,
)
from .margins import (
    center_gradient_scales,
    exact_center,
    exact_large_margin,
    exact_margin,
    exact_normalized_linear,
    large_margin_gradient_scales,
    margin_gradient_scale,
    margin_rows_mp,
    margin_target_mp,
    normalized_linear_gradient_scales,
)
from .normalizers import (
    log_softmax,
    log_softmax_vjp,
    log_softmax_vjp_scale,
    logsumexp,
    softmax,
    softmax_vjp,
    softmax_vjp_scale,
)

__all__ = [
    "ENGINES", "LONGDOUBLE_ENGINE", "LONGDOUBLE_IS_EXTENDED", "MPMATH_DIGITS", "MPMATH_ENGINE", "MPMATH_MAX_ELEMENTS",
    "MpRow", "require_mpmath", "resolve_engine", "to_exact", "to_mpf",
    "softmax", "log_softmax", "logsumexp", "softmax_vjp", "log_softmax_vjp",
    "softmax_vjp_scale", "log_softmax_vjp_scale", "cross_entropy_gradient_scale", "distillation_gradient_scale",
    "binary_cross_entropy_gradient_scale", "quadratic_cost_gradient_scale", "multiclass_hinge_gradient_scale",
    "exact_cross_entropy", "exact_distillation_loss", "exact_binary_cross_entropy_with_logits",
    "exact_quadratic_cost", "exact_multiclass_hinge", "exact_smooth_hinge",
    "exact_normalized_linear", "exact_margin", "margin_rows_mp", "exact_large_margin", "exact_center",
    "normalized_linear_gradient_scales", "margin_gradient_scale", "large_margin_gradient_scales",
    "center_gradient_scales", "exact_linear_cross_entropy", "float64_linear_cross_entropy",
    "margin_target_mp", "exact_linear_margin_cross_entropy", "float64_linear_margin_cross_entropy",
    "linear_margin_gradient_scales",
]
