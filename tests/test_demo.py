"""The demo's reuse of a finished validation."""

from __future__ import annotations

import os

from folkrnn.pipeline.demo import summary_is_current


def test_validation_is_reused_only_when_written_after_every_shard(tmp_path):
    shards = tmp_path / "generated"
    shards.mkdir()
    summary = tmp_path / "validation-summary.json"
    assert not summary_is_current(str(summary), str(shards))  # nothing yet
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (shards / name).write_bytes(b"x")
        os.utime(shards / name, (100, 100))
    assert not summary_is_current(str(summary), str(shards))  # shards, no summary
    summary.write_text("{}")
    os.utime(summary, (200, 200))
    assert summary_is_current(str(summary), str(shards))
    os.utime(shards / "part-00001.parquet", (300, 300))  # a shard rewritten (e.g. a resumed generation)
    assert not summary_is_current(str(summary), str(shards))
