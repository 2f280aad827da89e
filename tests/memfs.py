"""A Beam filesystem for tests: ``memfs://bucket/path``, objects in this process's memory.

It behaves as an object store does (as ``gs://`` does): no folders, only names with ``/`` in them;
a "folder" exists only as the prefix of some object's name; ``rename`` is a copy and a delete;
an object is visible once its writer is closed. Importing this module registers the scheme with
Beam (``FileSystems`` finds every ``FileSystem`` subclass by its ``scheme()``), so the code under
test reaches it through ``apache_beam.io.filesystems.FileSystems`` exactly as it reaches ``gs://``.
In-process runners only: the objects live in this process.
"""

from __future__ import annotations

import hashlib
import io

from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem

SCHEME = "memfs"


class MemoryFileSystem(FileSystem):
    objects: dict[str, bytes] = {}  # name -> bytes, shared by every instance (Beam makes many)
    deleted: list[str] = []  # every name deleted, in order
    refuse_overwrite = False  # True: rename fails onto an existing name, as on HDFS (gs:// replaces)

    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    @classmethod
    def clear(cls) -> None:
        cls.objects.clear()
        cls.deleted.clear()
        cls.refuse_overwrite = False

    def join(self, basepath: str, *paths: str) -> str:
        path = basepath.rstrip("/")
        for part in paths:
            path += "/" + part.strip("/")
        return path

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # an object store has no folders to make

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        for name in sorted(self.objects):
            if name.startswith(dir_or_prefix):
                yield FileMetadata(name, len(self.objects[name]), 0.0)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO) -> io.BytesIO:
        return _Upload(self.objects, path)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO) -> io.BytesIO:
        if path not in self.objects:
            raise BeamIOError(f"open failed: no object {path}", {path: FileNotFoundError(path)})
        return io.BytesIO(self.objects[path])

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        missing = {s: FileNotFoundError(s) for s in source_file_names if s not in self.objects}
        if missing:
            raise BeamIOError("copy failed", missing)
        for source, destination in zip(source_file_names, destination_file_names):
            self.objects[destination] = self.objects[source]

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        taken = {d: FileExistsError(d) for d in destination_file_names if d in self.objects}
        if self.refuse_overwrite and taken:
            raise BeamIOError("rename failed", taken)
        self.copy(source_file_names, destination_file_names)
        self.delete(source_file_names)

    def exists(self, path: str) -> bool:
        return path in self.objects

    def size(self, path: str) -> int:
        return len(self.objects[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        return hashlib.md5(self.objects[path]).hexdigest()

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, len(self.objects[path]), 0.0)

    def delete(self, paths: list[str]) -> None:
        missing = {}
        for path in paths:
            under = [name for name in self.objects if name.startswith(path.rstrip("/") + "/")]
            if path in self.objects:
                del self.objects[path]
                self.deleted.append(path)
            elif under:  # a "folder": everything named under it, as GCS deletes a prefix
                for name in under:
                    del self.objects[name]
                    self.deleted.append(name)
            else:
                missing[path] = FileNotFoundError(path)
        if missing:
            raise BeamIOError("delete failed", missing)


class _Upload(io.BytesIO):
    """The object appears when the writer is closed, as on GCS."""

    def __init__(self, objects: dict[str, bytes], path: str):
        super().__init__()
        self.objects, self.path = objects, path

    def close(self) -> None:
        if not self.closed:
            self.objects[self.path] = self.getvalue()
        super().close()


def upload_folder(local: str, url: str) -> None:
    """Copy a local folder's files to ``url`` (``memfs://bucket/x``), as ``gcloud storage cp -r`` would."""
    import os

    for folder, _, names in os.walk(local):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
            with open(os.path.join(folder, name), "rb") as handle:
                MemoryFileSystem.objects[f"{url.rstrip('/')}/{relative}"] = handle.read()
