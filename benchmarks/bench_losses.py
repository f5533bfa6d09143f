"""Side by side: the fused loss kernels against torch and JAX, speed and accuracy, in one run.

Speed: ``cross_entropy_forward_backward`` against ``F.cross_entropy(...)`` then ``.backward()``
and JAX's ``jit(value_and_grad(...))``, with and without label smoothing, on DESIGN.md's
matrix (float32 4096x1000, 512x32000, 64x262144, 1x4194304, and float64 4096x1000); and
``distillation_loss_forward_backward`` against torch's composition
``alpha T^2 kl_div(log_softmax(s/T), softmax(t/T), "batchmean") + (1 - alpha) cross_entropy``
(and the same in JAX).  Threads are pinned to the same count for every framework
(``softmaxlab.harness.environment.pin_threads``: numba, torch, and JAX's pool through the
CPU affinity).  Each provider is called once first (that call's time is reported apart:
Numba's compile, JAX's jit), then twice more to warm up, then the providers are timed
``CALLS_PER_ROUND`` calls at a time, interleaved, their order rotated each round, for
``--repeats`` rounds: the medians and their ratios come from measurements minutes apart at most, on a shared
machine whose load changes.  Inputs: 3 N(0, 1) logits, uniform labels.

Accuracy: the same losses and gradients on smaller inputs of three regimes, each provider
in its own dtype, against the exact references of ``softmaxlab.harness.registry_losses``
(mpmath at 50 digits): the largest error in ULPs of the dtype (``metrics.error_stats``).

Usage::

    python benchmarks/bench_losses.py                    # speed and accuracy (about 10 min on 2 cores)
    python benchmarks/bench_losses.py --speed --repeats 25
    python benchmarks/bench_losses.py --accuracy
    python benchmarks/bench_losses.py --quick            # a smoke run: 3 rounds, small shapes

Prints Markdown tables (and writes them to ``--output`` if given).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

SPEED_SHAPES = ((4096, 1000, "float32"), (512, 32000, "float32"), (64, 262144, "float32"),
                (1, 4194304, "float32"), (4096, 1000, "float64"))
QUICK_SHAPES = ((256, 1000, "float32"), (1, 65536, "float32"), (256, 1000, "float64"))
ACCURACY_SHAPE = (32, 1000)
ACCURACY_REGIMES = ("normal_x3", "dominant", "large_1e4")
TEMPERATURE, ALPHA = 4.0, 0.9
PROVIDERS = ("softmaxlab", "torch", "jax")
CALLS_PER_ROUND = 5  # consecutive timed calls of one provider in each round (see ``time_interleaved``)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every framework (default 2)")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved timing rounds (default 25, >= 20)")
    parser.add_argument("--speed", action="store_true", help="only the speed tables")
    parser.add_argument("--accuracy", action="store_true", help="only the accuracy table")
    parser.add_argument("--quick", action="store_true", help="smoke run: small shapes, 3 rounds")
    parser.add_argument("--output", help="also write the Markdown here")
    return parser.parse_args(argv)


# ---- the providers ------------------------------------------------------------------------------


def cross_entropy_providers(logits, labels, smoothing):
    """{provider: zero-argument call computing the mean loss and dL/dlogits}."""
    import jax
    import torch
    import torch.nn.functional as F

    from softmaxlab.harness.frameworks import jax_precision
    from softmaxlab.kernels import cross_entropy_forward_backward

    logits_tensor, labels_tensor = torch.from_numpy(logits), torch.from_numpy(labels)

    def run_torch():
        leaf = logits_tensor.detach().requires_grad_(True)
        loss = F.cross_entropy(leaf, labels_tensor, label_smoothing=smoothing)
        loss.backward()
        return loss.detach(), leaf.grad

    def jax_loss(x, y):
        log_probabilities = jax.nn.log_softmax(x, axis=-1)
        picked = -jax.numpy.take_along_axis(log_probabilities, y[:, None], axis=-1)[:, 0]
        uniform = -jax.numpy.mean(log_probabilities, axis=-1)
        return jax.numpy.mean((1 - smoothing) * picked + smoothing * uniform)

    with jax_precision(logits.dtype):
        device_logits = jax.device_put(logits)
        device_labels = jax.device_put(labels.astype(np.int32))
    jitted = jax.jit(jax.value_and_grad(jax_loss))

    def run_jax():
        with jax_precision(logits.dtype):
            return jax.block_until_ready(jitted(device_logits, device_labels))

    return {
        "softmaxlab": lambda: cross_entropy_forward_backward(logits, labels, label_smoothing=smoothing),
        "torch": run_torch,
        "jax": run_jax,
    }


def distillation_providers(student, teacher, labels):
    import jax
    import torch
    import torch.nn.functional as F

    from softmaxlab.harness.frameworks import jax_precision
    from softmaxlab.kernels import distillation_loss_forward_backward

    student_tensor, teacher_tensor = torch.from_numpy(student), torch.from_numpy(teacher)
    labels_tensor = torch.from_numpy(labels)

    def run_torch():
        leaf = student_tensor.detach().requires_grad_(True)
        soft = F.kl_div(F.log_softmax(leaf / TEMPERATURE, -1), F.softmax(teacher_tensor / TEMPERATURE, -1),
                        reduction="batchmean")
        loss = ALPHA * TEMPERATURE**2 * soft + (1 - ALPHA) * F.cross_entropy(leaf, labels_tensor)
        loss.backward()
        return loss.detach(), leaf.grad

    def jax_loss(z, v, y):
        jnp = jax.numpy
        log_q = jax.nn.log_softmax(z / TEMPERATURE, axis=-1)
        log_p = jax.nn.log_softmax(v / TEMPERATURE, axis=-1)
        p = jnp.exp(log_p)
        divergence = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
        hard = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), y[:, None], axis=-1)[:, 0]
        return jnp.mean(ALPHA * TEMPERATURE**2 * divergence + (1 - ALPHA) * hard)

    with jax_precision(student.dtype):
        device = (jax.device_put(student), jax.device_put(teacher), jax.device_put(labels.astype(np.int32)))
    jitted = jax.jit(jax.value_and_grad(jax_loss))

    def run_jax():
        with jax_precision(student.dtype):
            return jax.block_until_ready(jitted(*device))

    return {
        "softmaxlab": lambda: distillation_loss_forward_backward(student, teacher, labels, temperature=TEMPERATURE,
                                                                 alpha=ALPHA),
        "torch": run_torch,
        "jax": run_jax,
    }


# ---- timing ---------------------------------------------------------------------------------------


def time_interleaved(providers: dict, repeats: int, calls: int = CALLS_PER_ROUND) -> dict:
    """{provider: (first_call_s, [seconds per timed call])}, providers interleaved and rotated.

    Each round times ``calls`` consecutive calls of each provider, all of them kept: after
    a call, torch's OpenMP threads, JAX's Eigen pool and numba's workers keep spinning for
    a while (about a millisecond), and on 2 cores they slow the next provider's call.  One
    call per provider per round measured cross-entropy's 64x262144 cell at 81 ms for ours
    with label smoothing, 10 ms alone; with a run of calls only the first is exposed.
    """
    names = list(providers)
    first = {}
    for name in names:
        start = time.perf_counter()
        providers[name]()
        first[name] = time.perf_counter() - start
        providers[name]()
        providers[name]()
    samples = {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for round_index in range(repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                for _ in range(calls):
                    start = time.perf_counter()
                    providers[name]()
                    samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: (first[name], samples[name]) for name in names}


def speed_rows(shapes, repeats, progress):
    rng = np.random.default_rng(0)
    rows = []
    for rows_count, classes, dtype in shapes:
        logits = (3.0 * rng.standard_normal((rows_count, classes))).astype(dtype)
        teacher = (3.0 * rng.standard_normal((rows_count, classes))).astype(dtype)
        labels = rng.integers(0, classes, size=rows_count).astype(np.int64)
        cases = [("cross_entropy", "label_smoothing=0", cross_entropy_providers(logits, labels, 0.0)),
                 ("cross_entropy", "label_smoothing=0.1", cross_entropy_providers(logits, labels, 0.1)),
                 ("distillation_loss", f"T={TEMPERATURE:g}, alpha={ALPHA:g}",
                  distillation_providers(logits, teacher, labels))]
        for op, variant, providers in cases:
            progress(f"timing {op} {variant} {rows_count}x{classes} {dtype}")
            timings = time_interleaved(providers, repeats)
            row = {"op": op, "variant": variant, "shape": f"{rows_count}x{classes}", "dtype": dtype,
                   "rounds": repeats}
            for name, (first, samples) in timings.items():
                row[f"{name}_ms"] = 1e3 * float(np.median(samples))
                row[f"{name}_p20_ms"] = 1e3 * float(np.percentile(samples, 20))
                row[f"{name}_p80_ms"] = 1e3 * float(np.percentile(samples, 80))
                row[f"{name}_first_s"] = first
            rows.append(row)
    return rows


def speed_markdown(rows) -> str:
    lines = [
        "| op | variant | shape | dtype | softmaxlab ms | torch ms | jax ms | torch / softmaxlab | jax / softmaxlab "
        "| first call s (softmaxlab, torch, jax) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ours = row["softmaxlab_ms"]
        lines.append(
            f"| {row['op']} | {row['variant']} | {row['shape']} | {row['dtype']} "
            f"| {ours:.2f} [{row['softmaxlab_p20_ms']:.2f}, {row['softmaxlab_p80_ms']:.2f}] "
            f"| {row['torch_ms']:.2f} | {row['jax_ms']:.2f} "
            f"| **{row['torch_ms'] / ours:.2f}x** | {row['jax_ms'] / ours:.2f}x "
            f"| {row['softmaxlab_first_s']:.2f}, {row['torch_first_s']:.2f}, {row['jax_first_s']:.2f} |"
        )
    lines.append("")
    lines.append(f"Median of the timed calls ({CALLS_PER_ROUND} consecutive calls per provider in each interleaved round; "
                 "softmaxlab's p20 and p80 in brackets); the ratios "
                 "divide medians of the same run.  First call: the first call's time, compile (Numba) "
                 "or jit (JAX) included, excluded from the medians.")
    return "\n".join(lines)


# ---- accuracy ----------------------------------------------------------------------------------------


def accuracy_rows(progress):
    from softmaxlab.harness import regimes
    from softmaxlab.harness.frameworks import as_numpy
    from softmaxlab.harness.metrics import error_stats
    from softmaxlab.harness.registry_losses import exact_cross_entropy, exact_distillation_loss

    rows = []
    shape = ACCURACY_SHAPE
    for regime in ACCURACY_REGIMES:
        for dtype in ("float32", "float64"):
            logits = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0))
            teacher = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0, "teacher"))
            labels = np.random.default_rng(1).integers(0, shape[1], size=shape[0]).astype(np.int64)
            labels[::2] = np.argmax(logits, axis=1)[::2]  # confident rows: the dominant regime's tiny losses
            cases = [
                ("cross_entropy", "label_smoothing=0", cross_entropy_providers(logits, labels, 0.0),
                 lambda: exact_cross_entropy(logits, labels, engine="mpmath-50")),
                ("cross_entropy", "label_smoothing=0.1", cross_entropy_providers(logits, labels, 0.1),
                 lambda: exact_cross_entropy(logits, labels, label_smoothing=0.1, engine="mpmath-50")),
                ("distillation_loss", f"T={TEMPERATURE:g}, alpha={ALPHA:g}",
                 distillation_providers(logits, teacher, labels),
                 lambda: exact_distillation_loss(logits, teacher, labels, temperature=TEMPERATURE, alpha=ALPHA,
                                                 engine="mpmath-50")),
            ]
            for op, variant, providers, reference in cases:
                progress(f"accuracy {op} {variant} {regime} {dtype}")
                exact_loss, exact_grad = reference()
                row = {"op": op, "variant": variant, "regime": regime, "dtype": dtype}
                for name, run in providers.items():
                    loss, grad = as_numpy(run())
                    row[f"{name}_loss_ulp"] = error_stats(np.asarray(loss), exact_loss, dtype)["max_ulp"]
                    row[f"{name}_grad_ulp"] = error_stats(np.asarray(grad), exact_grad, dtype)["max_ulp"]
                rows.append(row)
    return rows


def accuracy_markdown(rows) -> str:
    def cell(value):
        return "nan" if not np.isfinite(value) else (f"{value:.3g}" if value < 1e4 else f"{value:.1e}")

    header = " | ".join(f"{name} loss | {name} grad" for name in PROVIDERS)
    lines = [f"| op | variant | regime | dtype | {header} |",
             "|---|---|---|---|" + "---:|" * (2 * len(PROVIDERS))]
    for row in rows:
        values = " | ".join(f"{cell(row[f'{name}_loss_ulp'])} | {cell(row[f'{name}_grad_ulp'])}" for name in PROVIDERS)
        lines.append(f"| {row['op']} | {row['variant']} | {row['regime']} | {row['dtype']} | {values} |")
    lines.append("")
    lines.append(f"Largest error in ULPs of the dtype against mpmath at 50 digits, {ACCURACY_SHAPE[0]}x"
                 f"{ACCURACY_SHAPE[1]} inputs, mean reduction, each provider in the input's dtype; even rows' "
                 "label is the row's argmax.")
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    from softmaxlab.harness import environment

    threads = environment.pin_threads(arguments.threads)
    run_speed = arguments.speed or not arguments.accuracy
    run_accuracy = arguments.accuracy or not arguments.speed
    repeats = 3 if arguments.quick else arguments.repeats
    shapes = QUICK_SHAPES if arguments.quick else SPEED_SHAPES

    def progress(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    load_before = environment.load_average()
    parts = ["# softmaxlab losses against torch and JAX\n"]
    if run_speed:
        parts += ["## Forward + backward time\n", speed_markdown(speed_rows(shapes, repeats, progress)), ""]
    if run_accuracy:
        parts += ["## Error against the exact reference (max ULP)\n", accuracy_markdown(accuracy_rows(progress)), ""]
    command = " ".join(["python", os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv)))
    parts.append(
        f"Command: `{command}`; threads: {environment.thread_counts()} (pinned to {threads}); machine: "
        f"{environment.machine_description()}; load average {load_before} at the start, "
        f"{environment.load_average()} at the end; {environment.versions_description()}; "
        f"commit {environment.commit_description()}; {environment.timestamp()}."
    )
    text = "\n".join(parts) + "\n"
    print(text)
    if arguments.output:
        with open(arguments.output, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
