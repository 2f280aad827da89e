"""``make bench``: run every benchmark and write benchmarks/RESULTS.md with the machine and date."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys

from folkrnn.schemas.files import atomic_write

BENCHMARKS = ["benchmarks.bench_ingest", "benchmarks.bench_validate", "benchmarks.bench_train",
              "benchmarks.bench_sample", "benchmarks.bench_well_formed", "benchmarks.bench_compile", "benchmarks.bench_analyze"]
RESULTS = os.path.join(os.path.dirname(__file__), "RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:
        gpu, torch_version = "no GPU", "not installed"
    return (f"{cpu}; {os.cpu_count()} cores; {gpu}; Python {platform.python_version()}; torch {torch_version}; "
            f"{platform.system()} {platform.release()}")


def main(selected: list[str]) -> int:
    names = [b for b in BENCHMARKS if not selected or any(s in b for s in selected)]
    sections = [f"# Benchmarks\n\nMachine: {machine()}  \nDate: {datetime.date.today().isoformat()}  \n"
                f"Command: `make bench` (python -m benchmarks.run)\n"]
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        print(f"running {name} ...", flush=True)
        result = module.run()
        print(result["markdown"], flush=True)
        sections.append(f"## {result['name']}\n\n{result['markdown']}\n")
    atomic_write(RESULTS, "\n".join(sections))
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
