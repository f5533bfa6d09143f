"""The timing engine's cases, smoke-run by the normal suite, and the variants it times when named.

With pyproject's ``--benchmark-disable`` each case of ``softmaxlab/harness/benchmarks.py``
calls its implementation once on the entry's tiny ``smoke_shapes`` and checks the outputs;
``softmaxlab bench`` runs the same module with benchmarks enabled.  The variants
(``registry.VARIANTS``: cross-entropy with label smoothing, the margin losses from
embeddings) run only when named.
"""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab.harness import bench
from softmaxlab.harness.benchmarks import pytest_generate_tests, test_benchmark  # noqa: F401
from softmaxlab.harness.profiles import get_profile
from softmaxlab.harness.providers import missing_requirement
from softmaxlab.harness.registry import REGISTRY, VARIANTS, select


def test_variants_are_left_out_unless_named():
    assert not set(VARIANTS) & set(REGISTRY)
    plan = bench.BenchPlan(get_profile("smoke"))
    assert {case.kernel for case in plan.cases} == set(REGISTRY)
    with pytest.raises(ValueError, match="unknown"):
        select(["cross_entropy_forward_backward[label_smoothing=0.2]"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_runs_for_every_provider(variant):
    entry = VARIANTS[variant]
    plan = bench.BenchPlan(get_profile("smoke"), kernels=[variant], drop_unavailable=True)
    providers = {case.provider for case in plan.cases}
    assert "softmaxlab" in providers and "limit:stream" in providers
    for case in plan.cases:
        run, _, _, result = plan.prepared(case)
        plan.check_result(case, result)
    available = [i for i in entry.implementations if missing_requirement(i.requires) is None]
    assert {i.provider for i in available} <= providers


def test_label_smoothing_variant_matches_its_reference():
    entry = VARIANTS["cross_entropy_forward_backward[label_smoothing=0.1]"]
    inputs = entry.make_inputs("normal_x3", (3, 11), "float64", 0)
    loss, grad = entry.exact(inputs, "mpmath-50")
    ours = entry.implementation("softmaxlab").prepare(inputs)()
    np.testing.assert_allclose(ours[0], loss.hi, rtol=1e-14)
    np.testing.assert_allclose(ours[1], grad.hi, rtol=1e-13, atol=1e-17)
    plain = REGISTRY["cross_entropy_forward_backward"].exact(inputs, "mpmath-50")
    assert abs(plain[0].hi - loss.hi) > 1e-3  # the option reaches the reference
