"""Side-by-side timings of the margin losses, forward + backward, and their parity with
pytorch-metric-learning; prints two Markdown tables.

Run (2 cores):  nice -n 10 python benchmarks/bench_margins.py

* From cosines: ours (``*_forward_backward``: loss and dcos) against a plain torch
  composition (the target's margin with torch ops, ``F.cross_entropy`` on ``s * logits``,
  ``torch.autograd.grad``) and pytorch-metric-learning's own target-logit code applied to the
  same cosines (``CosFaceLoss`` / ``ArcFaceLoss``: ``modify_cosine_of_target_classes``,
  ``scale_logits``, cross-entropy), at 512 x 10575 and 256 x 93431 classes, float32.
* From embeddings x (rows, 512) and weights W (classes, 512): ours (``normalized_linear`` ->
  ``*_forward_backward`` -> ``normalized_linear_backward``; SphereFace:
  ``large_margin_cross_entropy_forward_backward``) against torch (``F.normalize``,
  ``F.linear``, the margin, cross-entropy, autograd to x and W) and pml's losses called on
  (x, labels) with their weights set to W^T.  Dominated by the three (rows x 512 x classes)
  matrix products; no ratio goal.

Threads pinned equal: numba.set_num_threads(T), torch.set_num_threads(T) and NumPy's BLAS
limited to T (threadpoolctl), T = 2 by default.  Compile and JIT time are excluded: every
implementation is called twice before timing; each cell is the median of ``--repeats`` timed
calls (default 21), providers interleaved call by call.  The providers' implementations are
the registry's (``softmaxlab/harness/registry_margins.py``); the inputs its ``normal_x3``
regime (target cosines uniform in [-0.95, 0.95]).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings

import numba
import numpy as np

from softmaxlab import kernels
from softmaxlab.harness import registry_margins as margins

SHAPES = ((512, 10575), (256, 93431))
COSINE_LOSSES = {  # name -> (our kernel, its parameters, (s, m1, m2, m3), pml class and parameters)
    "NormFace s=20": ("normface_forward_backward", dict(s=20.0), (20.0, 1.0, 0.0, 0.0), None),
    "CosFace s=64 m=0.35": ("cosface_forward_backward", dict(s=64.0, m=0.35), (64.0, 1.0, 0.0, 0.35),
                            ("CosFaceLoss", dict(margin=0.35, scale=64))),
    "ArcFace s=64 m=0.5": ("arcface_forward_backward", dict(s=64.0, m=0.5), (64.0, 1.0, 0.5, 0.0),
                           ("ArcFaceLoss", dict(margin=math.degrees(0.5), scale=64))),
    "combined s=64 (1, 0.3, 0.2)": ("margin_cross_entropy_forward_backward", dict(s=64.0, m1=1.0, m2=0.3, m3=0.2),
                                    (64.0, 1.0, 0.3, 0.2), None),
}


def pin_threads(count: int):
    import torch

    numba.set_num_threads(count)
    torch.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=count, user_api="blas")
    except ImportError:  # BLAS then uses its default (the machine's cores)
        print("threadpoolctl not installed: NumPy's BLAS threads are not pinned", file=sys.stderr)
        return None


def time_interleaved(runs: dict, repeats: int) -> dict:
    """(median, min) seconds per provider; two warm-up calls each, then providers interleaved call by call."""
    for run in runs.values():
        run()
        run()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: (statistics.median(values), min(values)) for name, values in samples.items()}


# ---- the x, W path ------------------------------------------------------------------------------


def _ours_from_embeddings(kernel, parameters, x, W, target):
    forward_backward = getattr(kernels, kernel)

    def run():
        cos = kernels.normalized_linear(x, W)
        loss, dcos = forward_backward(cos, target, **parameters)
        dx, dW = kernels.normalized_linear_backward(x, W, dcos)
        return loss, dx, dW

    return run


def _torch_from_embeddings(margins_tuple, x, W, target):
    import torch

    functional = torch.nn.functional
    s, m1, m2, m3 = margins_tuple
    x_tensor, W_tensor, target_tensor = torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(target)
    rows = torch.arange(x.shape[0])

    def run():
        features, weights = x_tensor.detach().requires_grad_(True), W_tensor.detach().requires_grad_(True)
        cos = functional.linear(functional.normalize(features, dim=1), functional.normalize(weights, dim=1))
        logits = cos.clone()
        logits[rows, target_tensor] = margins._torch_target_function(torch, cos[rows, target_tensor], m1, m2, m3)
        loss = functional.cross_entropy(s * logits, target_tensor)
        return (loss.detach(), *torch.autograd.grad(loss, (features, weights)))

    return run


def _pml_from_embeddings(loss_class, parameters, x, W, target):
    import torch
    from pytorch_metric_learning import losses

    loss_function = getattr(losses, loss_class)(num_classes=W.shape[0], embedding_size=W.shape[1], **parameters)
    loss_function.W.data = torch.from_numpy(np.ascontiguousarray(W.T))
    x_tensor, target_tensor = torch.from_numpy(x), torch.from_numpy(target)

    def run():
        features = x_tensor.detach().requires_grad_(True)
        loss = loss_function(features, target_tensor)
        dx, dWt = torch.autograd.grad(loss, (features, loss_function.W))
        return loss.detach(), dx, dWt.T

    return run


# ---- tables -------------------------------------------------------------------------------------


def _format_ms(timing):
    median, fastest = timing
    return f"{median * 1e3:.1f} ({fastest * 1e3:.1f})"


def speed_table(repeats: int, shapes, dtype: str, paths=("cosines", "embeddings")) -> str:
    lines = [
        "| path | loss | rows x classes | softmaxlab ms | torch ms | pml ms | torch / softmaxlab | pml / softmaxlab |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def add(path, name, shape, timings):
        ours = timings["softmaxlab"]
        torch_s, pml_s = timings.get("torch"), timings.get("pml")
        cells = [_format_ms(ours), _format_ms(torch_s), _format_ms(pml_s) if pml_s else "-",
                 f"{torch_s[0] / ours[0]:.1f}x", f"{pml_s[0] / ours[0]:.1f}x" if pml_s else "-"]
        lines.append(f"| {path} | {name} | {shape[0]} x {shape[1]} | " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)

    for shape in shapes if "cosines" in paths else ():
        inputs = margins.cosine_inputs("normal_x3", shape, dtype, 0)
        for name, (kernel, parameters, margins_tuple, pml) in COSINE_LOSSES.items():
            runs = {
                "softmaxlab": margins._softmaxlab(getattr(kernels, kernel), **parameters)(inputs),
                "torch": margins._torch_margin(*margins_tuple, True)(inputs),
            }
            if pml:
                runs["pml"] = margins._pml_on_cosines(pml[0], True, **pml[1])(inputs)
            add("cosines -> (loss, dcos)", name, shape, time_interleaved(runs, repeats))
    for shape in shapes if "embeddings" in paths else ():
        features = margins.feature_inputs("normal_x3", shape, dtype, 0)
        x, W, target = features["x"], features["W"], features["target"]
        for name in ("CosFace s=64 m=0.35", "ArcFace s=64 m=0.5"):
            kernel, parameters, margins_tuple, pml = COSINE_LOSSES[name]
            runs = {
                "softmaxlab": _ours_from_embeddings(kernel, parameters, x, W, target),
                "torch": _torch_from_embeddings(margins_tuple, x, W, target),
                "pml": _pml_from_embeddings(pml[0], pml[1], x, W, target),
            }
            add(f"x, W (D={x.shape[1]}) -> (loss, dx, dW)", name, shape, time_interleaved(runs, repeats))
        large_margin = margins.LARGE_MARGIN
        runs = {
            "softmaxlab": margins._softmaxlab(kernels.large_margin_cross_entropy_forward_backward,
                                              **large_margin)(features),
            "torch": margins._torch_large_margin(True, **large_margin)(features),
            "pml": margins._pml_sphereface(True, large_margin["m"])(features),
        }
        add(f"x, W (D={x.shape[1]}) -> (loss, dx, dW)", "SphereFace m=4", shape, time_interleaved(runs, repeats))
    return "\n".join(lines)


def _relative_difference(ours, theirs):
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def parity_table(rows=64, classes=1000, features=64) -> str:
    """Max |ours - pml| / max |pml| of the loss, dx and dW, float64 and float32, same x, W, labels."""
    from pytorch_metric_learning import losses

    lines = ["| pml loss | ours | dtype | loss | dx | dW |", "|---|---|---|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    W64 = rng.standard_normal((classes, features))
    target = rng.integers(0, classes, size=rows)
    x64 = rng.standard_normal((rows, features))
    x64[: rows // 3] = W64[target[: rows // 3]] + 0.3 * x64[: rows // 3]  # small angles
    x64[-rows // 8:] = -W64[target[-rows // 8:]] + 0.1 * x64[-rows // 8:]  # theta + m > pi: ArcFace's fallback
    cases = [
        ("CosFaceLoss(margin=0.35, scale=64)", "cosface(s=64, m=0.35)",
         lambda x, W: _ours_from_embeddings("cosface_forward_backward", dict(s=64.0, m=0.35), x, W, target)(),
         lambda x, W: _pml_from_embeddings("CosFaceLoss", dict(margin=0.35, scale=64), x, W, target)()),
        ("ArcFaceLoss(margin=28.6 deg, scale=64)", "arcface(s=64, m=0.4992)",
         lambda x, W: _ours_from_embeddings("arcface_forward_backward", dict(s=64.0, m=math.radians(28.6)), x, W,
                                            target)(),
         lambda x, W: _pml_from_embeddings("ArcFaceLoss", dict(margin=28.6, scale=64), x, W, target)()),
        ("NormalizedSoftmaxLoss(temperature=0.05)", "normface(s=20)",
         lambda x, W: _ours_from_embeddings("normface_forward_backward", dict(s=20.0), x, W, target)(),
         lambda x, W: _pml_from_embeddings("NormalizedSoftmaxLoss", dict(temperature=0.05), x, W, target)()),
    ]
    for m in (1, 2, 3, 4):
        cases.append((f"LargeMarginSoftmaxLoss(margin={m})", f"large_margin(m={m})",
                      lambda x, W, m=m: kernels.large_margin_cross_entropy_forward_backward(x, W, target, m=m),
                      lambda x, W, m=m: _pml_from_embeddings("LargeMarginSoftmaxLoss", dict(margin=m, scale=1), x, W,
                                                             target)()))
        cases.append((f"SphereFaceLoss(margin={m})", f"large_margin(m={m}, normalize_weights=True)",
                      lambda x, W, m=m: kernels.large_margin_cross_entropy_forward_backward(x, W, target, m=m,
                                                                                            normalize_weights=True),
                      lambda x, W, m=m: _pml_from_embeddings("SphereFaceLoss", dict(margin=m, scale=1), x, W,
                                                             target)()))
    assert losses  # imported for the error message if pml is missing
    for theirs_name, ours_name, ours, theirs in cases:
        for dtype in (np.float64, np.float32):
            x, W = x64.astype(dtype), W64.astype(dtype)
            differences = [_relative_difference(a, b) for a, b in zip(ours(x, W), theirs(x, W))]
            lines.append(f"| {theirs_name} | {ours_name} | {np.dtype(dtype).name} | "
                         + " | ".join(f"{d:.1e}" for d in differences) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for numba, torch and BLAS (default 2)")
    parser.add_argument("--repeats", type=int, default=21, help="timed calls per provider (median; default 21)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--quick", action="store_true", help="small shapes, 5 repeats (a smoke run)")
    parser.add_argument("--paths", nargs="+", default=["cosines", "embeddings"], choices=["cosines", "embeddings"],
                        help="which timings: from cosines, from embeddings x and weights W (default both)")
    parser.add_argument("--no-speed", action="store_true", help="only the parity table")
    parser.add_argument("--no-parity", action="store_true", help="only the speed table")
    args = parser.parse_args(argv)
    # pml's LargeMarginSoftmaxLoss calls scipy.special.binom on tensors (a NumPy 2 deprecation, not ours)
    warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
    limits = pin_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch
    import pytorch_metric_learning

    shapes = ((64, 1000), (32, 5000)) if args.quick else SHAPES
    repeats = 5 if args.quick else args.repeats
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    print(f"Command: `{command}`\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; threads: numba "
          f"{numba.get_num_threads()}, torch {torch.get_num_threads()}, BLAS {args.threads if limits else 'default'}. "
          f"Versions: numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}, "
          f"pytorch-metric-learning {pytorch_metric_learning.__version__}. Load average at start: {load:.2f}.\n")
    if not args.no_speed:
        print(f"## Forward + backward, {args.dtype}: median (min) of {repeats} calls, ms; ratios of medians\n")
        print(speed_table(repeats, shapes, args.dtype, args.paths))
        print()
    if not args.no_parity:
        print("## Parity with pytorch-metric-learning: max |ours - pml| / max |pml| (64 x 1000 classes, D = 64)\n")
        print(parity_table())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLoad average at the end: {load:.2f} (other processes share the {os.cpu_count()} CPUs).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
