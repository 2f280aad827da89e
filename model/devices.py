"""Where the model runs: the one place that turns ``--device`` into a torch device."""

from __future__ import annotations

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
