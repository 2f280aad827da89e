"""Where the model runs: the one place that turns ``--device`` into a torch device."""

from __future__ import annotations

import os
import time

import torch

from folkrnn.schemas.errors import UsageError, setting


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:1`` ... as torch reads them.
    CUDA asked for on a machine without it is a UsageError (one line), not a failure deep in torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"{setting('device')} {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{setting('device')} cuda was asked for but no CUDA device is available; use "
                         f"{setting('device')} cpu")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), without which bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --- torch threads on a shared CPU -----------------------------------------------------------------------
PROBE_SECONDS = 0.3  # how long the cores are watched before a run picks its threads


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_times(stat_text: str) -> dict[int, tuple[int, int]]:
    """/proc/stat's text -> {cpu: (busy, total) clock ticks}; busy is user, nice, system, irq,
    softirq and steal (a hypervisor's other guests take a core too), idle and iowait are not."""
    times = {}
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in (fields + ["0"] * 8)[:8])
        busy = user + nice + system + irq + softirq + steal
        times[int(name[3:])] = (busy, busy + idle + iowait)
    return times


def cores_in_use(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: list[int]) -> float:
    """How many of ``cpus`` were busy between two ``cpu_times`` readings (0 to len(cpus))."""
    used = 0.0
    for cpu in cpus:
        if cpu in before and cpu in after and after[cpu][1] > before[cpu][1]:
            used += (after[cpu][0] - before[cpu][0]) / (after[cpu][1] - before[cpu][1])
    return used


def threads_beside(others: float, cores: int) -> int:
    """Threads for one computing process on ``cores`` cores of which other processes keep ``others``
    busy: the cores left, rounded; at least 1. torch's threads wait for each other after every
    operation, so one descheduled thread stalls them all: on 2 cores with one other busy process,
    2 threads trained 3x slower than 1 (benchmarks: issue 17)."""
    return max(1, min(cores, round(cores - others)))


def default_threads(seconds: float = PROBE_SECONDS) -> tuple[int, float]:
    """(torch threads for a process computing alone, the cores other processes were seen using):
    the usable cores watched for ``seconds`` (Linux /proc/stat; elsewhere all cores, (n, 0.0))."""
    cpus = usable_cpus()
    if len(cpus) == 1:
        return 1, 0.0
    try:
        with open("/proc/stat") as handle:
            before = cpu_times(handle.read())
        time.sleep(seconds)
        with open("/proc/stat") as handle:
            after = cpu_times(handle.read())
    except OSError:
        return len(cpus), 0.0
    others = cores_in_use(before, after, cpus)
    return threads_beside(others, len(cpus)), others
