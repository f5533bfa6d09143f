"""What a run measures: entries, providers (the built-in ones, ``softmaxlab_torch``, a user's own), shapes, inputs.

``softmaxlab accuracy`` and ``softmaxlab bench`` (and the Python API, ``api.py``) turn
their options into a :class:`Selection` here, and every mistake in them into a
:class:`SelectionError` that names what was expected and lists the valid names: an unknown
kernel or provider, a provider with no implementation of any selected kernel, a selection
that leaves no case to run.  ``cli.main`` prints its message and exits with status 2.

**Bring your own implementation.**  ``--provider NAME=module:function`` runs ``function``
as the provider ``NAME`` wherever the softmaxlab provider runs the selected kernel: the
same inputs, the same call, ``function`` in the kernel's place
(``prepare.with_function``, ``providers/softmaxlab.py``).  So ``function`` takes and
returns what the kernel of that name takes and returns (NumPy arrays; see
``help(softmaxlab.kernels.<kernel>)``).  ``NAME=module`` instead takes, for each selected
kernel, the module's attribute of the kernel's name (``mylib.softmax`` for ``softmax``,
``mylib.cosface_forward_backward`` for ``cosface_forward_backward``).  The module is
imported from the current directory or ``PYTHONPATH``.  A torch or JAX function is
adapted with a few lines: ``torch.from_numpy`` on the way in and ``.numpy()`` on the way
out; ``np.asarray(jax_function(x))`` for JAX (see ``providers/adapters.py``, which does
this for ``softmaxlab.torch``).  Packages can offer providers through the entry-point
group ``softmaxlab.providers`` (name = the provider's name, value = ``module`` or
``module:function`` as above).

**Optional providers** run only when named in ``--providers``: ``softmaxlab_torch`` and
``softmaxlab_jax`` (the adapters' differentiable operations, ``providers/adapters.py``;
the forward-backward entries are a training step of the loss).

**Devices.** ``--device cuda`` runs the torch and JAX providers on the GPU (inputs copied
there in prepare, every call awaited), as the providers ``torch@cuda`` and ``jax@cuda``
beside the CPU ones, against the same exact references; without a GPU it is an error.

**Shapes and inputs.** ``--shape RxC`` replaces the entries' benchmark shapes (``bench``)
or the accuracy regimes' shape (``accuracy``); ``--input FILE.npy`` runs the entries on
a 2-D array of the user's as their first input (the logits or cosines), the other inputs
(targets, upstream gradients) drawn as for the ``normal_x3`` regime, under the regime
name ``file:<stem>``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .profiles import Profile, profile_entries
from .registry import REGISTRY, VARIANTS, Implementation, Operation

ENTRY_POINT_GROUP = "softmaxlab.providers"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class SelectionError(ValueError):
    """A run's options select nothing valid; the message names what was expected and what came."""


@dataclass(frozen=True)
class ExtraProvider:
    """A provider outside the registry: ``function_for(kernel)`` is its function with the
    kernel's signature, or None when it has none for that kernel."""

    name: str
    source: str
    function_for: Callable[[str], Callable | None]
    requires: tuple[str, ...] = ()


def _optional_providers() -> dict:
    from .providers import adapters

    return {
        adapters.NAME: ExtraProvider(adapters.NAME, "softmaxlab.torch", adapters.function_for, adapters.REQUIRES),
        adapters.JAX_NAME: ExtraProvider(adapters.JAX_NAME, "softmaxlab.jax",
                                         lambda kernel: adapters.function_for(kernel, "jax"), adapters.JAX_REQUIRES),
    }


def builtin_providers(registry: dict | None = None) -> tuple[str, ...]:
    """Every provider name of the registry's entries, in the registry's order."""
    entries = {**(REGISTRY if registry is None else registry), **VARIANTS}
    return tuple(dict.fromkeys(provider for entry in entries.values() for provider in entry.providers))


def kernel_names(registry: dict | None = None) -> tuple[str, ...]:
    return tuple(REGISTRY if registry is None else registry) + tuple(VARIANTS)


def _load_function(name: str, source: str) -> ExtraProvider:
    module_name, _, attribute = source.partition(":")
    if not module_name:
        raise SelectionError(f"--provider {name}=...: expected module or module:function, got {source!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the current directory first
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise SelectionError(f"--provider {name}={source}: cannot import {module_name!r} from the current "
                             f"directory or PYTHONPATH ({type(error).__name__}: {error})") from None
    if attribute:
        function = getattr(module, attribute, None)
        if not callable(function):
            raise SelectionError(f"--provider {name}={source}: module {module_name!r} has no function {attribute!r}")
        return ExtraProvider(name, source, lambda kernel: function)

    def by_kernel_name(kernel: str):
        found = getattr(module, kernel.split("[")[0], None)
        return found if callable(found) else None

    return ExtraProvider(name, source, by_kernel_name)


def parse_provider(text: str, registry: dict | None = None) -> ExtraProvider:
    """``NAME=module:function`` or ``NAME=module`` -> the provider (imported now)."""
    name, equals, source = text.partition("=")
    if not equals or not _NAME.match(name):
        raise SelectionError(f"--provider must be NAME=module:function or NAME=module with NAME a word, got {text!r}")
    taken = set(builtin_providers(registry)) | set(_optional_providers())
    if name in taken:
        raise SelectionError(f"--provider {text}: {name!r} is a built-in provider's name; built-in: {sorted(taken)}")
    return _load_function(name, source)


def entry_point_providers() -> dict:
    """The providers packages declare in the ``softmaxlab.providers`` entry-point group, by name."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def parse_shape(text: str) -> tuple[int, int]:
    """``"512x10575"`` -> (512, 10575)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise SelectionError(f"--shape must be ROWSxCLASSES with positive integers (e.g. 512x10575), got {text!r}")
    return int(match[1]), int(match[2])


def with_provider(entry: Operation, provider: ExtraProvider) -> Operation | None:
    """``entry`` with ``provider`` added as one more implementation (``function`` in the
    softmaxlab provider's call), or None when the provider has no function for it."""
    function = provider.function_for(entry.kernel)
    if function is None:
        return None
    prepare = entry.implementation("softmaxlab").prepare
    implementation = Implementation(provider.name, prepare.with_function(function), requires=provider.requires,
                                    description=f"{provider.source} in the softmaxlab provider's call")
    return dataclasses.replace(entry, implementations=entry.implementations + (implementation,))


DEVICE_PROVIDERS = ("torch", "jax")


def check_device(device: str) -> None:
    """SelectionError unless ``device`` is "cpu" or a GPU that torch or JAX can use here."""
    if device == "cpu":
        return
    if device != "cuda":
        raise SelectionError(f"--device must be cpu or cuda, got {device!r}")
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if not available:
        raise SelectionError("--device cuda: no CUDA device here (torch.cuda.is_available() is False); the torch "
                             "and JAX providers run on the CPU without --device")


def _on_device(implementation: Implementation, device: str) -> Implementation:
    """The torch or JAX ``implementation`` with its inputs placed on ``device`` in prepare and
    each call awaited (``torch.cuda.synchronize``; JAX's calls already block until ready)."""
    from .providers import on_device

    original = implementation.prepare

    if implementation.provider == "torch":
        def prepare(inputs):
            import torch

            with on_device(device):
                run = original(inputs)

            def synchronized():
                result = run()
                torch.cuda.synchronize()
                return result

            return synchronized
    else:
        def prepare(inputs):
            import jax

            target = jax.devices("gpu")[0]
            with jax.default_device(target):
                run = original(inputs)

            def placed():
                with jax.default_device(target):
                    return run()

            return placed

    return dataclasses.replace(implementation, prepare=prepare,
                               description=f"{implementation.description} on {device}".strip())


def with_device(entry: Operation, device: str) -> Operation:
    """``entry`` with its torch and JAX implementations on ``device``, renamed ``torch@cuda``, ``jax@cuda``."""
    implementations = tuple(
        dataclasses.replace(_on_device(implementation, device), provider=f"{implementation.provider}@{device}")
        if implementation.provider in DEVICE_PROVIDERS else implementation
        for implementation in entry.implementations)
    return dataclasses.replace(entry, implementations=implementations)


def _primary_input(inputs: dict, shape: tuple[int, int]) -> str | None:
    for key, value in inputs.items():
        if isinstance(value, np.ndarray) and value.shape == shape and value.dtype.kind == "f":
            return key
    return None


def with_input_file(entry: Operation, path: Path, array: np.ndarray) -> Operation | None:
    """``entry`` running on ``array`` as its first input, under the regime ``file:<stem>``,
    or None when the entry's first input is not a rows x classes matrix."""
    shape = array.shape
    probe = entry.make_inputs("normal_x3", shape, array.dtype if array.dtype.kind == "f" else np.float64, 0)
    if _primary_input(probe, shape) is None:
        return None
    regime = f"file:{path.stem}"

    def make_inputs(regime_name, requested_shape, dtype, seed):
        inputs = entry.make_inputs("normal_x3", shape, dtype, seed)
        inputs[_primary_input(inputs, shape)] = np.ascontiguousarray(array, dtype=dtype)
        return inputs

    return dataclasses.replace(entry, make_inputs=make_inputs, regimes=(regime,),
                               bench_shapes=tuple((*shape, dtype) for dtype in ("float32", "float64")),
                               smoke_shapes=((*shape, "float32"),))


def load_input_file(text: str) -> tuple[Path, np.ndarray]:
    path = Path(text)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:
        raise SelectionError(f"--input must be a .npy file of a 2-D real array, could not read {text!r} "
                             f"({type(error).__name__}: {error})") from None
    if array.ndim != 2 or array.dtype.kind not in "fiu" or 0 in array.shape:
        raise SelectionError(f"--input must hold a non-empty 2-D real array (rows x classes), got shape "
                             f"{array.shape} and dtype {array.dtype} in {text!r}")
    return path, array


@dataclass
class Selection:
    """The profile (with the run's dtypes and shapes) and the entries, extra providers added."""

    profile: Profile
    entries: dict
    providers: tuple[str, ...] | None  # None: every provider of each entry (optional ones excepted)


def select(profile: Profile, *, kernels=None, providers=None, extra_providers=(), shapes=None, dtypes=None,
           input_file=None, device: str = "cpu", registry: dict | None = None) -> Selection:
    """Check a run's options and build what it runs (see the module docstring)."""
    names = kernel_names(registry)
    unknown = [name for name in kernels or () if name not in names]
    if unknown:
        raise SelectionError(f"unknown kernel(s) {unknown}; kernels: {', '.join(names)}")
    entries = profile_entries(profile, registry, kernels)
    if not entries:
        fused = [f"{name}_forward_backward" for name in kernels if f"{name}_forward_backward" in names]
        hint = f": it runs the losses through their fused entries, e.g. {fused}" if profile.fused_only and fused else ""
        raise SelectionError(f"no kernel selected: the profile {profile.name!r} runs none of {list(kernels)}{hint}")
    optional = _optional_providers()
    extras = [parse_provider(item, registry) if isinstance(item, str) else item for item in extra_providers]
    extras += [optional[name] for name in dict.fromkeys(providers or ()) if name in optional]
    points = entry_point_providers()
    extras += [_load_function(name, points[name].value) for name in dict.fromkeys(providers or ())
               if name in points and name not in optional]
    known = set(builtin_providers(registry)) | {extra.name for extra in extras}
    if providers is not None:
        unknown = [name for name in providers if name not in known]
        if unknown:
            raise SelectionError(f"unknown provider(s) {unknown}; providers: {sorted(known | set(optional))}"
                                 f"{', from packages: ' + str(sorted(points)) if points else ''}, or your own "
                                 f"with --provider NAME=module:function")
    for extra in extras:
        added = {name: with_provider(entry, extra) for name, entry in entries.items()}
        if not any(added.values()):
            raise SelectionError(f"provider {extra.name!r} ({extra.source}) has no function for any selected kernel "
                                 f"{sorted(entries)}")
        entries = {name: added[name] or entry for name, entry in entries.items()}
    wanted = None if providers is None and not extras else \
        tuple(dict.fromkeys([*(providers or builtin_providers(registry)), *(extra.name for extra in extras)]))
    if wanted is not None:
        for name in wanted:
            if providers is not None and name in providers and not any(name in entry.providers
                                                                       for entry in entries.values()):
                have = {kernel: entry.providers for kernel, entry in entries.items()}
                raise SelectionError(f"provider {name!r} has no implementation of the selected kernels; "
                                     f"their providers: {have}")
    if dtypes:
        bad = [dtype for dtype in dtypes if dtype not in ("float32", "float64")]
        if bad:
            raise SelectionError(f"dtypes must be float32 or float64, got {bad}")
        profile = dataclasses.replace(profile, dtypes=tuple(dtypes))
    if shapes:
        shapes = [parse_shape(shape) if isinstance(shape, str) else tuple(shape) for shape in shapes]
        if len(shapes) == 1:  # accuracy: every regime at this shape
            profile = dataclasses.replace(profile, accuracy_shape=shapes[0], million_shape=shapes[0])
        profile = dataclasses.replace(profile, bench_smoke_shapes=False, bench_max_elements=None)
        entries = {name: dataclasses.replace(entry, bench_shapes=tuple((rows, classes, dtype) for rows, classes in shapes
                                                                       for dtype in profile.dtypes))
                   for name, entry in entries.items()}
    if input_file is not None:
        path, array = load_input_file(input_file) if isinstance(input_file, (str, Path)) else input_file
        replaced = {name: with_input_file(entry, path, array) for name, entry in entries.items()}
        refused = sorted(name for name, entry in replaced.items() if entry is None)
        if refused:
            raise SelectionError(f"--input {path}: {refused} take no rows x classes matrix as their first input; "
                                 f"choose entries of logits or cosines (softmax, cross_entropy, cosface, ...)")
        entries = replaced
        profile = dataclasses.replace(profile, accuracy_shape=array.shape, million_shape=array.shape,
                                      bench_smoke_shapes=False, bench_max_elements=None)
    check_device(device)
    if device != "cpu":
        entries = {name: with_device(entry, device) for name, entry in entries.items()}
        if wanted is not None:
            wanted = tuple(f"{name}@{device}" if name in DEVICE_PROVIDERS else name for name in wanted)
    return Selection(profile, entries, wanted)


def require_cases(count: int, what: str, hint: str) -> None:
    """SelectionError when a run's selection leaves no case."""
    if count == 0:
        raise SelectionError(f"the selection matches no {what} case: {hint}")
