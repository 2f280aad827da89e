"""Datasets: find a dataset's Parquet files, open them with pyarrow, select rows with a SQL condition.

The condition engine is DuckDB: ``--where`` (``query``, ``stats``, ``compile``) is a SQL boolean
expression (``meter = '6/8' AND mode = 'dor' AND valid``, ``len(tokens) > 200``,
``list_contains(reasons, 'bar_too_long')``), parsed by DuckDB as one expression (never a statement).
pyarrow opens the Parquet files and DuckDB scans them as an Arrow dataset on a connection that can
read nothing else (no files, URLs, extensions or settings: see SANDBOX), so a condition sees only
the dataset. DuckDB pushes the column list and simple comparisons down into the Arrow scan: hive
partitions that cannot match (``volume = 3``) are not opened, row groups are skipped by their
min/max statistics and only the needed columns are read.

A dataset is a folder of Parquet files (``generated/part-*.parquet``), a hive-partitioned folder
(``corpus/volume=1/part-0.parquet``) or one ``.parquet`` file. ``find_shards`` is stricter: the flat
``part-*.parquet`` shards that ``validate`` rewrites in place.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

from folkrnn.schemas import files
from folkrnn.schemas.errors import UsageError

NESTED = ("generated", "tunes")  # where generate and ingest put their shards


def find_shards(dataset: str) -> list[str]:
    """The dataset's shard paths, sorted; a UsageError says what is wrong with the folder.

    ``dataset`` may be on any Beam filesystem (``gs://bucket/run/generated``): see ``_find_remote_shards``.
    """
    if not files.is_local(dataset):
        return _find_remote_shards(dataset)
    dataset = files.local_path(dataset)
    if not os.path.exists(dataset):
        raise UsageError(f"no such dataset: {dataset} (give a folder of part-*.parquet shards)")
    if not os.path.isdir(dataset):
        raise UsageError(f"{dataset} is not a folder (give the folder that holds the part-*.parquet shards)")
    shards = sorted(glob.glob(os.path.join(dataset, "part-*.parquet")))
    if not shards:
        nested = [d for d in NESTED if glob.glob(os.path.join(dataset, d, "part-*.parquet"))]
        if len(nested) == 1:
            shards = sorted(glob.glob(os.path.join(dataset, nested[0], "part-*.parquet")))
    if not shards:
        raise UsageError(f"{dataset} holds no part-*.parquet shards")
    return shards


def _find_remote_shards(dataset: str) -> list[str]:
    """``find_shards`` on an object store, where a folder is only a prefix of its files' names."""
    from folkrnn.pipeline.beam import storage

    base = dataset.rstrip("/")
    shards = storage.glob(f"{base}/part-*.parquet")
    if not shards:
        nested = [found for found in (storage.glob(f"{base}/{d}/part-*.parquet") for d in NESTED) if found]
        shards = nested[0] if len(nested) == 1 else []
    if shards:
        return shards
    if storage.is_file(base):
        raise UsageError(f"{dataset} is not a folder (give the folder that holds the part-*.parquet shards)")
    if not storage.list_tree(base):
        raise UsageError(f"no such dataset: {dataset} (give a folder of part-*.parquet shards)")
    raise UsageError(f"{dataset} holds no part-*.parquet shards")


def dataset_files(path: str) -> tuple[list[str], bool, str]:
    """(Parquet files, hive-partitioned?, dataset folder) of a dataset; UsageError if there is none.

    A folder whose Parquet files all sit in one subfolder (a generate run folder holds
    ``generated/``, a compile output ``corpus/``) stands for that subfolder. Only ``*.parquet``
    files count: writers' temporary files (``part-0.parquet.tmp``, ``.part-0.parquet.x.tmp``) are
    not read. ``path`` may be on any Beam filesystem (``gs://``): the same rules, on its listing.
    """
    if not files.is_local(path):
        return _remote_dataset_files(path)
    path = files.local_path(path)
    if not os.path.exists(path):
        raise UsageError(f"no dataset at {path}: give a folder of Parquet files (e.g. out/generated) or a .parquet file")
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise UsageError(f"{path} is not a .parquet file: give a folder of Parquet files or a .parquet file")
        return [path], False, path
    flat = sorted(glob.glob(os.path.join(glob.escape(path), "*.parquet")))
    if flat:
        return flat, False, path
    nested = sorted(glob.glob(os.path.join(glob.escape(path), "**", "*.parquet"), recursive=True))
    return _nested_dataset(path, [os.path.relpath(f, path).replace(os.sep, "/") for f in nested], os.path.join,
                           dataset_files)


def _remote_dataset_files(path: str) -> tuple[list[str], bool, str]:
    from folkrnn.pipeline.beam import storage

    path = path.rstrip("/")
    if storage.is_file(path):
        if not path.endswith(".parquet"):
            raise UsageError(f"{path} is not a .parquet file: give a folder of Parquet files or a .parquet file")
        return [path], False, path
    listing = storage.list_tree(path)
    if not listing:
        raise UsageError(f"no dataset at {path}: give a folder of Parquet files (e.g. gs://bucket/run/generated) "
                         "or a .parquet file")
    # as local glob does: names starting with "." (writers' temporary files, staging folders) are not read
    parquet = [name for name in listing
               if name.endswith(".parquet") and not any(part.startswith(".") for part in name.split("/"))]
    flat = [name for name in parquet if "/" not in name]
    if flat:
        return [f"{path}/{name}" for name in flat], False, path
    return _nested_dataset(path, parquet, lambda base, name: f"{base}/{name}", _remote_dataset_files)


def _nested_dataset(path: str, nested: list[str], join, recurse) -> tuple[list[str], bool, str]:
    """A folder without Parquet files of its own: hive partitions, or the one table folder it holds.
    ``nested``: its Parquet files' paths relative to it, ``/``-separated."""
    hive = [name for name in nested if all("=" in part for part in name.split("/")[:-1])]
    if hive:
        return [join(path, name) for name in hive], True, path
    tables = sorted({name.split("/")[0] for name in nested})
    if len(tables) == 1:
        return recurse(join(path, tables[0]))
    if tables:
        raise UsageError(f"{path} is not one dataset but holds {', '.join(tables)}: give one of them, "
                         f"e.g. {join(path, tables[0])}")
    raise UsageError(f"no Parquet files in {path}: give a folder written by folkrnn generate, validate or compile")


def arrow_files(found: list[str], base: str) -> tuple[Any, list[str], str]:
    """(pyarrow filesystem, paths, base) to open a dataset's files with pyarrow: the local filesystem
    with absolute paths, or a Beam filesystem (``gs://``) with its paths as Arrow names them."""
    import pyarrow.fs

    if files.is_local(base):
        return pyarrow.fs.LocalFileSystem(), [os.path.abspath(f) for f in found], os.path.abspath(base)
    from folkrnn.pipeline.beam import storage

    return storage.arrow_filesystem(base), [storage.arrow_path(f) for f in found], storage.arrow_path(base)


# Every DuckDB connection folkrnn opens runs a user's --where condition, so it is a sandbox from
# its first moment: the condition sees only the data handed to DuckDB as Arrow (the dataset, opened
# by pyarrow below), never a file, URL, extension, Python variable or setting.
SANDBOX = {
    # read_text/read_csv/read_parquet/glob/sniff_csv, '/path' as a table, COPY, ATTACH, http:// and
    # s3:// paths, INSTALL/LOAD and scans of Python variables are all refused
    "enable_external_access": False,
    # an http:// path must not make DuckDB fetch or load httpfs
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    # SET/RESET cannot undo any of the above
    "lock_configuration": True,
}
WHERE_SCOPE = "--where may only use the dataset's columns"


def connect() -> Any:
    """A DuckDB connection that can read nothing but the Arrow data it is given (see SANDBOX)."""
    import duckdb

    return duckdb.connect(config=SANDBOX)


def arrow_dataset(path: str) -> Any:
    """The dataset at ``path`` as a pyarrow dataset: hive partitions become columns, and files whose
    columns differ are read by name (missing columns are nulls, types promoted where they can be)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    found, hive, base = dataset_files(path)
    filesystem, paths, base = arrow_files(found, base)
    options = ds.FileSystemFactoryOptions(
        partition_base_dir=base if hive else None,
        partitioning=ds.HivePartitioning.discover() if hive else None)
    try:
        factory = ds.FileSystemDatasetFactory(filesystem, paths, ds.ParquetFileFormat(), options)
        return factory.finish(factory.inspect(promote_options="permissive", fragments=None))
    except (pa.ArrowException, OSError) as err:
        raise UsageError(f"cannot read {path} as Parquet: {_first_line(err)}") from None


def relation(con: Any, path: str) -> Any:
    """A DuckDB relation over the dataset (lazy: nothing is read until it is fetched).

    DuckDB scans the pyarrow dataset and pushes the column list and the simple comparisons of a
    condition into that scan: hive partitions that cannot match are not opened, row groups are
    skipped by their statistics.
    """
    return con.from_arrow(arrow_dataset(path))


def _first_line(err: BaseException) -> str:
    return str(err).strip().split("\n")[0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def where_error(err: Exception, what: str = "cannot be evaluated") -> UsageError:
    """A one-line UsageError for a DuckDB error raised by a --where condition.

    A condition reaching outside the dataset (a file, URL, table, setting) is told what it may use;
    DuckDB's own message names the path at most, never a file's contents (the sandbox refuses to
    open it).
    """
    import duckdb

    message = _first_line(err)
    if "reading the Arrow source failed" in message:  # a damaged file of the dataset, not the condition
        return UsageError(f"cannot read the dataset's Parquet files: {message}")
    if isinstance(err, duckdb.PermissionException) or (
            isinstance(err, duckdb.CatalogException) and "Table" in message):
        return UsageError(f"{WHERE_SCOPE}: {message}")
    return UsageError(f"--where {what}: {message}")


def apply_where(rel: Any, where: str | None) -> Any:
    """``rel`` filtered by a SQL condition; a bad condition is a one-line UsageError.

    The relation API parses ``where`` as one expression, so ``; DROP ...`` or ``) UNION SELECT``
    is a syntax error, and the sandboxed connection keeps a subquery inside the dataset.
    """
    import duckdb

    if where is None:
        return rel
    if not where.strip():
        raise UsageError("--where is empty: give a condition such as \"meter = '6/8' AND valid\"")
    try:
        return rel.filter(where)
    except duckdb.BinderException as err:
        message = _first_line(err)
        if "not found" in message and "column" in message.lower():
            name = message.split('"')[1] if message.count('"') >= 2 else "?"
            columns = ", ".join(c for c in rel.columns if not c.startswith("__"))
            raise UsageError(f"unknown column {name!r} in --where; columns are: {columns}") from None
        raise where_error(err, "cannot be used") from None
    except duckdb.ParserException as err:
        raise UsageError(f"malformed --where {where!r}: {_first_line(err)} (give one condition on the dataset's "
                         "columns, e.g. \"meter = '6/8' AND valid\")") from None
    except duckdb.Error as err:
        raise where_error(err, "cannot be used") from None


def check_columns(requested: Sequence[str], available: Sequence[str]) -> None:
    for name in requested:
        if name not in available:
            raise UsageError(f"unknown column {name!r} in --columns; columns are: {', '.join(available)}")


def select(path: str, *, where: str | None = None, columns: Sequence[str] | None = None,
           limit: int | None = None) -> Any:
    """Rows of the dataset at ``path`` matching ``where``, as an Arrow table, in number (or id) order.

    ``columns`` None means every column. Errors a user can fix raise UsageError.
    """
    import duckdb

    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    con = connect()
    rel = relation(con, path)
    available = list(rel.columns)
    if columns is not None:
        check_columns(columns, available)
    rel = apply_where(rel, where)
    order = next((c for c in ("number", "id") if c in available), None)
    try:
        if order:
            rel = rel.order(_quote(order))
        if columns is not None:
            rel = rel.project(", ".join(_quote(c) for c in columns))
        if limit is not None:
            rel = rel.limit(limit)
        return rel.to_arrow_table()
    except duckdb.Error as err:  # a condition that parses but fails on the data, e.g. a bad cast
        raise where_error(err) from None


def filter_table(table: Any, where: str) -> Any:
    """Rows of an in-memory Arrow table matching a SQL condition (``folkrnn compile --where``).

    DuckDB only says which rows match; the result is taken from ``table`` in its own order, so it
    keeps the table's Arrow types exactly.
    """
    import duckdb
    import pyarrow as pa

    con = connect()
    rel = apply_where(con.from_arrow(table.append_column("__row", pa.array(range(table.num_rows), pa.int64()))),
                      where)
    try:
        rows = rel.project('"__row"').to_arrow_table().column(0)
    except duckdb.Error as err:
        raise where_error(err) from None
    return table.take(pa.array(sorted(rows.to_pylist()), pa.int64()))
