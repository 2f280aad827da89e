"""The generation stage on Beam: tune-number ranges in, Parquet shards out.

The same sampler and shard writer as a local run (model/generate.py), so a Beam run and a local
run of the same settings write the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from folkrnn.model.generate import RunSettings, generate_shards, load_sampler, shard_done, shard_path


class _GenerateShard(beam.DoFn):
    """Loads the checkpoint once per worker (on its GPU when it has one); samples whole shards."""

    def __init__(self, checkpoint: str, settings: RunSettings, out: str, batch_size: int, device: str,
                 threads: int = 0):
        self.checkpoint, self.settings, self.out = checkpoint, settings, out
        self.batch_size, self.device, self.threads = batch_size, device, threads
        self.tunes = Metrics.counter("generate", "tunes")
        self.shards = Metrics.counter("generate", "shards")

    def setup(self) -> None:
        import torch

        from folkrnn.model.devices import resolve_device
        from folkrnn.pipeline.generate_workers import worker_threads

        # Runners start an SDK process per core (Dataflow: one per vCPU), so on CPUs each samples
        # with one thread, as local workers do; torch's threads would fight over the cores.
        threads = worker_threads(self.threads, resolve_device(self.device).type == "cpu")
        if threads:
            torch.set_num_threads(threads)
        self.sampler = load_sampler(self.checkpoint, self.settings.dtype, self.device)
        logging.info("generate: sampler on %s", self.sampler.device)

    def process(self, shard: tuple[int, int, int]) -> Iterator[str]:
        index, first, last = shard
        if shard_done(shard_path(self.out, index)):  # a retried bundle finds its work done
            yield shard_path(self.out, index)
            return
        for path in generate_shards(self.sampler, self.settings, self.out, [shard], self.batch_size):
            self.shards.inc()
            self.tunes.inc(last - first + 1)
            yield path


class GenerateTunes(beam.PTransform):
    """(shard index, first number, last number) ranges -> paths of the GENERATED Parquet shards written.

    Each worker loads the checkpoint once in ``setup()`` and samples its ranges in continuously
    refilled batches; tunes are reproducible by number, so any split of the work gives the same files.
    """

    def __init__(self, checkpoint: str, settings: RunSettings, out: str, batch_size: int = 1024,
                 device: str = "auto", threads: int = 0):
        super().__init__()
        self.checkpoint, self.settings, self.out = checkpoint, settings, out
        self.batch_size, self.device, self.threads = batch_size, device, threads

    def expand(self, shards):
        return (
            shards
            | "SpreadShards" >> beam.Reshuffle()
            | "SampleShard" >> beam.ParDo(
                _GenerateShard(self.checkpoint, self.settings, self.out, self.batch_size, self.device,
                               self.threads))
        )
