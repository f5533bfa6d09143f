"""What the sharded-loss benchmarks share: the command line, the output, the load, timed steps.

``sharded_communication.py``, ``sharded_scaling.py`` and ``sharded_ports.py`` import it (the
benchmarks folder is on ``sys.path`` when one of them runs as a script); importing it puts the
repository's root on ``sys.path`` too, for ``tests/distributed/spawn.py``'s ``spawn_group``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse(doc: str, script: str, argv=None, repeats: int | None = None, flags=()):
    """(arguments, the command line as run): ``--out`` always, ``--repeats`` with a default, ``flags``
    (name, help) as store_true options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help=f"timed steps (default {repeats})")
    for name, text in flags:
        parser.add_argument(name, action="store_true", help=text)
    args = parser.parse_args(argv)
    if repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be a positive integer, got {args.repeats}")
    command = [f"python benchmarks/{script}"] + ([f"--out {args.out}"] if args.out else [])
    if repeats is not None and args.repeats != repeats:
        command.append(f"--repeats {args.repeats}")
    command += [name for name, _ in flags if getattr(args, name.lstrip("-").replace("-", "_"))]
    return args, " ".join(command)


def emit(parts, out: Path | None) -> None:
    """The Markdown paragraphs ``parts`` into ``out`` (its folder made), or printed."""
    text = "\n\n".join(parts) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        print(text)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def timed(call, repeats: int) -> list[float]:
    """One untimed call, then ``repeats`` timed calls, each after a barrier of the default group."""
    import torch.distributed as dist

    call()
    times = []
    for _ in range(repeats):
        dist.barrier()
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return times


def steps(per_rank: list[list[float]]) -> tuple[float, float, float]:
    """(median, fastest, slowest) step, a step being the slowest rank's time of one repeat."""
    slowest = [max(times) for times in zip(*per_rank)]
    return statistics.median(slowest), min(slowest), max(slowest)
