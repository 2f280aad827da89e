"""A generation run: tune numbers 1..N in shards of Parquet, resumable, the same locally or on Beam.

A run folder holds ``manifest.json`` (what was asked, by whom, with which checkpoint and versions)
and ``generated/part-SSSSS.parquet`` shards of ``shard_size`` consecutive tune numbers, each sorted
by number and written atomically. A shard on disk is finished; re-running the same command skips
it. Because every tune is reproducible by its number, a shard has the same bytes whichever runner,
batch size or worker made it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from folkrnn.schemas import files
from folkrnn.schemas.tables import GENERATED
from folkrnn.schemas.vocab import TOKEN_TO_ID

SHARDS_DIR = "generated"


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides the tunes of a run (two runs with equal settings make equal tunes)."""

    checkpoint_id: str
    num_tunes: int
    seed: int = 0
    temperature: float = 1.0
    prime: tuple[str, ...] = ()
    max_tokens: int = 1000
    top_k: int = 0
    top_p: float = 0.0
    dtype: str = "fp32"
    shard_size: int = 1000
    well_formed: bool = False  # the grammar of model/grammar.py masks every draw
    form: str = ""  # with well_formed: parts to write, e.g. "AABB" ("": the model's choice)
    bars_per_part: tuple[int, ...] = ()  # with a form: bars of each part

    def shards(self) -> list[tuple[int, int, int]]:
        """(shard index, first number, last number) for tunes 1..num_tunes."""
        out = []
        for index, start in enumerate(range(1, self.num_tunes + 1, self.shard_size)):
            out.append((index, start, min(self.num_tunes, start + self.shard_size - 1)))
        return out

    def sample_kwargs(self) -> dict:
        from folkrnn.model.grammar import Form

        form = Form.parse(self.form, list(self.bars_per_part)) if self.form else None
        return {"seed": self.seed, "temperature": self.temperature, "prime": list(self.prime),
                "max_tokens": self.max_tokens, "top_k": self.top_k, "top_p": self.top_p,
                "well_formed": self.well_formed or form is not None, "form": form}


@dataclass
class Manifest:
    settings: RunSettings
    checkpoint: str
    checkpoint_name: str = ""  # the checkpoint's human name (meta["name"]): title pages print it
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    versions: dict = field(default_factory=dict)

    def to_json(self) -> str:
        value = {"settings": asdict(self.settings), "checkpoint": self.checkpoint,
                 "checkpoint_name": self.checkpoint_name, "command": self.command,
                 "versions": self.versions or package_versions()}
        value["settings"]["prime"] = list(self.settings.prime)
        return json.dumps(value, indent=2)


def package_versions() -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("folkrnn", "torch", "numpy", "pyarrow", "apache-beam"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def shard_path(out: str, index: int) -> str:
    return files.join(out, SHARDS_DIR, f"part-{index:05d}.parquet")


def tune_row(tune, settings: RunSettings) -> dict:
    """A GENERATED row for one sampled tune."""
    from folkrnn.transforms.abc.tokenize import detokenize
    from folkrnn.transforms.titles import title_for
    from folkrnn.transforms.validator import meter_and_mode

    tokens = tune.tokens
    meter, mode = meter_and_mode(tokens)
    title = title_for(tune.number, meter)
    return {
        "number": tune.number,
        "seed": settings.seed,
        "temperature": settings.temperature,
        "prime": " ".join(settings.prime),
        "checkpoint_id": settings.checkpoint_id,
        "meter": meter,
        "mode": mode,
        "title": title,
        "tokens": tokens,
        "token_ids": [TOKEN_TO_ID[t] for t in tokens],
        "length": len(tokens),
        "truncated": tune.truncated,
        "constraint_log_mass": tune.constraint_log_mass,
        "abc": detokenize(tokens, number=tune.number, title=title),
    }


def write_shard(path: str, rows: list[dict]) -> None:
    """Rows sorted by number, written to a temporary name and renamed: never half a shard."""
    files.makedirs(path.rsplit("/", 1)[0])
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["number"]), schema=GENERATED)
    files.write_parquet(path, table)


def shard_done(path: str) -> bool:
    return files.exists(path)


def dtype_of(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def local_checkpoint(path: str) -> str:
    """A local file for a checkpoint that may live on any Beam filesystem (gs:// ...); a downloaded
    copy is the caller's to remove."""
    if "://" not in path:
        return path
    handle, local = tempfile.mkstemp(suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(files.read_bytes(path))
    except BaseException:
        os.unlink(local)
        raise
    return local


def load_model(checkpoint: str):
    """The checked model of a local or remote checkpoint, on the CPU (config, shapes and finite
    weights checked before anything is built: see model/checkpoint.py)."""
    return load_named_model(checkpoint)[0]


def load_named_model(checkpoint: str):
    """``load_model`` and the checkpoint's human name (its meta["name"], or one from its sizes)."""
    from folkrnn.model.checkpoint import checkpoint_name, load_checkpoint

    local = local_checkpoint(checkpoint)
    try:
        model, payload = load_checkpoint(local, "cpu", name=checkpoint)
    finally:
        if local != checkpoint:
            os.unlink(local)
    return model, checkpoint_name(payload)


def load_sampler(checkpoint: str, dtype: str = "fp32", device: str = "auto", model=None):
    """A sampler for ``checkpoint`` (or for ``model``, already loaded from it)."""
    from folkrnn.model.devices import resolve_device
    from folkrnn.model.sample import Sampler

    return Sampler(model if model is not None else load_model(checkpoint), device=resolve_device(device),
                   dtype=dtype_of(dtype))


def generate_shards(sampler, settings: RunSettings, out: str, shards: list[tuple[int, int, int]],
                    batch_size: int = 1024, progress=None) -> Iterator[str]:
    """Sample the tunes of the given shards with one continuously refilled batch; write each shard
    as soon as its last tune is done. Yields the paths written."""
    pending = {index: (first, last, []) for index, first, last in shards}
    owner = {}
    numbers = []
    for index, first, last in shards:
        for number in range(first, last + 1):
            owner[number] = index
            numbers.append(number)
    for tune in sampler.sample(numbers, batch_size=batch_size, **settings.sample_kwargs()):
        index = owner[tune.number]
        first, last, rows = pending[index]
        rows.append(tune_row(tune, settings))
        if progress is not None:
            progress.update(1)
        if len(rows) == last - first + 1:
            path = shard_path(out, index)
            write_shard(path, rows)
            del pending[index]
            yield path
