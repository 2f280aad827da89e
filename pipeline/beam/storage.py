"""Datasets on any Beam filesystem (``gs://``, or any scheme a Beam ``FileSystem`` registers): list and read.

Local paths never come here: ``os`` and pyarrow read them directly. A remote dataset is listed with
``FileSystems.match`` and read by Arrow through ``arrow_filesystem``, a read-only pyarrow filesystem
whose files are Beam's, so ``compile``, ``query``, ``stats`` and ``validate`` read ``gs://`` as they
read a local folder (hive partitions and all). Arrow's own paths carry no scheme: the filesystem
adds it back (``bucket/run/part-0.parquet`` is ``gs://bucket/run/part-0.parquet``).

Arrow gets each file whole (a shard is a few MB, and compile reads every column anyway): that
needs nothing of a Beam filesystem but ``open().read()``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
from apache_beam.io.filesystems import FileSystems


def scheme_of(path: str) -> str:
    return path.split("://", 1)[0]


def arrow_path(path: str) -> str:
    """``gs://bucket/x`` -> ``bucket/x``: the path as the filesystem of ``arrow_filesystem`` names it."""
    return path.split("://", 1)[1]


def list_tree(folder: str) -> list[str]:
    """Every file under ``folder``, as paths relative to it, sorted (object-store folder markers left out)."""
    base = folder.rstrip("/") + "/"
    found = FileSystems.match([base + "**"])[0].metadata_list
    return sorted(m.path[len(base):] for m in found if m.path.startswith(base) and not m.path.endswith("/"))


def glob(pattern: str) -> list[str]:
    """The paths matching ``pattern`` (``*`` within a name, ``**`` across folders), sorted."""
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def is_file(path: str) -> bool:
    """True for a file (an object); a folder of an object store is only a prefix and is not one."""
    return FileSystems.exists(path)


class BeamFiles(pafs.FileSystemHandler):
    """A read-only pyarrow filesystem over Beam's ``FileSystems`` for one scheme."""

    def __init__(self, scheme: str):
        self.scheme = scheme

    def url(self, path: str) -> str:
        return f"{self.scheme}://{path}"

    def get_type_name(self) -> str:
        return f"beam-{self.scheme}"

    def equals(self, other: Any) -> bool:
        return isinstance(other, BeamFiles) and other.scheme == self.scheme

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [self._info(path) for path in paths]

    def _info(self, path: str) -> pafs.FileInfo:
        found = FileSystems.match([self.url(path)])[0].metadata_list
        if found:
            return pafs.FileInfo(path, pafs.FileType.File, size=found[0].size_in_bytes)
        if list_tree(self.url(path)):
            return pafs.FileInfo(path, pafs.FileType.Directory)
        return pafs.FileInfo(path, pafs.FileType.NotFound)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        base = selector.base_dir.rstrip("/")
        names = list_tree(self.url(base))
        if not names and not selector.allow_not_found:
            raise FileNotFoundError(f"no such folder: {self.url(base)}")
        infos: dict[str, pafs.FileInfo] = {}
        for name in names:
            parts = name.split("/")
            folders = parts[:-1] if selector.recursive else parts[:-1][:1]  # the folders a name implies
            for depth in range(1, len(folders) + 1):
                folder = f"{base}/{'/'.join(folders[:depth])}"
                infos.setdefault(folder, pafs.FileInfo(folder, pafs.FileType.Directory))
            if selector.recursive or len(parts) == 1:
                infos[f"{base}/{name}"] = self._info(f"{base}/{name}")
        return list(infos.values())

    def open_input_file(self, path: str) -> pa.NativeFile:
        with FileSystems.open(self.url(path)) as handle:
            return pa.BufferReader(handle.read())

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.open_input_file(path)

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{self.scheme}:// datasets are read here, not written through Arrow")

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _read_only
    move = copy_file = open_output_stream = open_append_stream = _read_only


def arrow_filesystem(path: str) -> pafs.FileSystem:
    """The pyarrow filesystem that reads ``path``'s scheme through Beam."""
    return pafs.PyFileSystem(BeamFiles(scheme_of(path)))
