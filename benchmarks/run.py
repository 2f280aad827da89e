"""``make bench``: run every benchmark and write benchmarks/RESULTS.md with the machine and date."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys

from folkrnn.schemas.files import atomic_write

BENCHMARKS = ["benchmarks.bench_ingest", "benchmarks.bench_ingest_scale", "benchmarks.bench_validate",
              "benchmarks.bench_train", "benchmarks.bench_sample", "benchmarks.bench_well_formed",
              "benchmarks.bench_workers", "benchmarks.bench_compile", "benchmarks.bench_analyze"]
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


def merged(old_text: str, new_sections: dict[str, str]) -> str:
    """RESULTS.md with the sections of the benchmarks just run replaced (or added at the end), the
    others kept as they were measured."""
    head, *parts = old_text.split("\n## ")
    sections = {part.split("\n", 1)[0]: "## " + part for part in parts}
    for title, text in new_sections.items():
        sections[title] = text
    return "\n".join([head.rstrip("\n") + "\n", *(t.rstrip("\n") + "\n" for t in sections.values())])


def main(selected: list[str]) -> int:
    """Every benchmark (then RESULTS.md is written anew), or those whose names contain one of
    ``selected`` (then only their sections are replaced, each saying its machine and date)."""
    names = [b for b in BENCHMARKS if not selected or any(s in b for s in selected)]
    stamp = f"Machine: {machine()}  \nDate: {datetime.date.today().isoformat()}  \n"
    sections: dict[str, str] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            print(f"skipping {name}: {err}", file=sys.stderr)
            continue
        print(f"running {name} ...", flush=True)
        result = module.run()
        print(result["markdown"], flush=True)
        own_stamp = f"{stamp}Command: `python -m benchmarks.run {name.split('.')[-1]}`\n\n" if selected else ""
        sections[result["name"]] = f"## {result['name']}\n\n{own_stamp}{result['markdown']}\n"
    if selected and os.path.exists(RESULTS):
        with open(RESULTS, encoding="utf-8") as handle:
            text = merged(handle.read(), sections)
    else:
        text = "\n".join([f"# Benchmarks\n\n{stamp}Command: `make bench` (python -m benchmarks.run)\n",
                           *sections.values()])
    atomic_write(RESULTS, text)
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
