"""Local generation on several cores: one worker process per core, one torch thread each.

Why processes: torch's threads in one process meet at a barrier after every operation. On 2 cores
two 1-thread processes sampled 28% more tokens/s than one 2-thread process, and when another job
takes a core the barrier makes the threads wait for it (1,000 tunes: 144 s against 57 s).

How the work is shared: the tunes still to make are cut into chunks of ``CHUNK`` consecutive
numbers; a shared counter hands the next chunk to whichever worker has a free slot in its batch,
so every worker keeps one continuously refilled batch and all finish within a tune of each other.
Workers send each finished tune's row back; this process writes a shard (atomically) as soon as
its last tune arrives, so a killed run keeps its finished shards and resumes as before. Tunes
are reproducible by number (model/sample.py), so the files are byte for byte those of one process.

Workers are started with "spawn" (a fork of a process holding Beam's gRPC threads can abort),
are daemons, die with this process even on kill -9 (Linux: PR_SET_PDEATHSIG), and are stopped
when it stops. A worker's error ends the run as that error (one line from the CLI).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from folkrnn.schemas.errors import UsageError, setting

# A worker costs a process start (2-3 s importing torch); at v2 size that is about the time one
# core takes for 100 tunes, so a default worker gets at least this many.
WORKER_TUNES = 256
CHUNK = 16  # tune numbers handed out at once: small enough that the workers end together
STOP_SECONDS = 5.0  # a stopped worker has this long to end before it is killed


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(device_type: str, tunes: int) -> int:
    """One worker per usable core on the CPU, but at most one per WORKER_TUNES tunes to make; one on
    a GPU (its kernels already use the whole device)."""
    if device_type != "cpu":
        return 1
    return max(1, min(usable_cores(), tunes // WORKER_TUNES))


def worker_threads(threads: int, one_per_core: bool) -> int:
    """torch threads for a sampling process: ``threads`` if given (the --threads flag), else 1 where
    processes run one per core (several local workers, Beam's SDK workers on CPUs), else 0 (torch's
    choice: a thread per core)."""
    return threads or (1 if one_per_core else 0)


def chunks_of(todo: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """(first, last) number ranges of at most CHUNK tunes covering the shards to do, in order."""
    return [(start, min(last, start + CHUNK - 1))
            for _, first, last in todo for start in range(first, last + 1, CHUNK)]


class RemoteTraceback(Exception):
    """A worker's traceback, chained to the error it raised (seen with FOLKRNN_TRACEBACK=1)."""


def run_workers(model, settings, out: str, todo: list[tuple[int, int, int]], *, workers: int,
                batch_size: int, threads: int = 1, device: str = "cpu",
                progress: Callable[[int], object] | None = None) -> None:
    """Sample the tunes of the ``todo`` shards in ``workers`` processes and write the shards.

    ``model`` is the checked model (sent to the workers as weights, so the run uses the
    checkpoint as it was read, whatever happens to the file); ``threads`` torch threads each;
    ``progress(n)`` is called as tunes arrive. Each worker has its own pipe: a worker killed in
    the middle of a message leaves a cut message only in its own pipe, which then reads as its
    end (a queue shared by all would hang every reader and writer on it).
    """
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    next_chunk = context.Value("q", 0)
    weights = model_bytes(model)
    shards = ShardCollector(settings, out, todo, progress)
    running: dict[object, tuple[int, object]] = {}  # reading end -> (worker number, process)
    procs = []
    try:
        for number in range(1, workers + 1):
            reader, writer = context.Pipe(duplex=False)
            proc = context.Process(target=worker_main, name=f"folkrnn-generate-{number}", daemon=True,
                                   args=(number, os.getpid(), weights, settings, todo, batch_size, threads,
                                         device, next_chunk, writer))
            procs.append(proc)
            proc.start()
            writer.close()  # the worker holds the only writing end: its death is the pipe's end
            running[reader] = (number, proc)
        while running:
            for reader in wait(list(running)):
                number, proc = running[reader]
                if read_messages(reader, number, proc, shards):
                    del running[reader]
                    reader.close()
        shards.check_complete()
    finally:
        stop(procs)
        for reader in running:
            reader.close()


class ShardCollector:
    """Rows in, shards out: a shard is written (atomically) when its last tune arrives."""

    def __init__(self, settings, out: str, todo: list[tuple[int, int, int]], progress):
        self.settings, self.out, self.progress = settings, out, progress
        self.size = {index: last - first + 1 for index, first, last in todo}
        self.rows: dict[int, list[dict]] = {}

    def add(self, row: dict) -> None:
        from folkrnn.model.generate import shard_path, write_shard

        index = (row["number"] - 1) // self.settings.shard_size
        rows = self.rows.setdefault(index, [])
        rows.append(row)
        if self.progress is not None:
            self.progress(1)
        if len(rows) == self.size[index]:
            write_shard(shard_path(self.out, index), self.rows.pop(index))

    def check_complete(self) -> None:
        if self.rows:  # every number is handed out once, so this is a bug
            raise RuntimeError(f"the generate workers ended with shards {sorted(self.rows)} unfinished")


def read_messages(reader, number: int, proc, shards: ShardCollector) -> bool:
    """Handle what worker ``number`` sent; True once it is done. Its error is raised here; a pipe
    that ends without "done" (the worker was killed) is a WorkerDied."""
    while reader.poll():
        try:
            kind, *body = reader.recv()
        except (EOFError, OSError):
            break
        if kind == "row":
            shards.add(body[0])
        elif kind == "error":
            error, trace = body
            error.__cause__ = RemoteTraceback(f"in generate worker {number}:\n{trace}")
            raise error
        else:
            return True
    else:
        return False
    proc.join(STOP_SECONDS)  # its pipe ended with it: how did it end?
    raise WorkerDied(number, proc.exitcode)


def model_bytes(model) -> bytes:
    """The model's config and weights as torch.save bytes (tensors and plain values only)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"config": model.config.to_dict(), "state": model.state_dict()}, buffer)
    return buffer.getvalue()


def model_from_bytes(data: bytes):
    import torch

    from folkrnn.model.network import FolkRNN, ModelConfig

    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model = FolkRNN(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state"])
    return model.eval()


def stop(procs: list) -> None:
    """Stop the workers still running (SIGTERM, then SIGKILL) and reap them all."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is None:  # never started
            continue
        proc.join(STOP_SECONDS)
        if proc.is_alive():
            proc.kill()
            proc.join()


def worker_main(number: int, parent: int, weights: bytes, settings, todo: list, batch_size: int, threads: int,
                device: str, next_chunk, results) -> None:
    """A worker: sample chunks of tune numbers until none is left, sending each tune's row."""
    from folkrnn.pipeline.subprocesses import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops us
    try:
        sample_chunks(weights, settings, todo, batch_size, threads, device, next_chunk, results)
    except BaseException as err:  # noqa: BLE001 - every failure goes to the parent, which reports it
        try:
            results.send(("error", portable(err), traceback.format_exc()))
        except OSError:  # the parent is gone
            pass
        sys.exit(1)
    results.send(("done",))


def sample_chunks(weights: bytes, settings, todo: list, batch_size: int, threads: int, device: str,
                  next_chunk, results) -> None:
    import torch

    from folkrnn.model.generate import load_sampler, tune_row

    if threads:
        torch.set_num_threads(threads)
    sampler = load_sampler("", settings.dtype, device, model_from_bytes(weights))
    chunks = chunks_of(todo)

    def numbers():
        while True:
            with next_chunk.get_lock():
                taken = next_chunk.value
                next_chunk.value = taken + 1
            if taken >= len(chunks):
                return
            first, last = chunks[taken]
            yield from range(first, last + 1)

    with memory_for_batch(batch_size, settings.max_tokens):
        for tune in sampler.sample(numbers(), batch_size=batch_size, **settings.sample_kwargs()):
            results.send(("row", tune_row(tune, settings)))


class WorkerDied(UsageError):
    """A worker process ended without reporting an error (killed, out of memory ...)."""

    def __init__(self, number: int, exit_code: int | None):
        how = (f"was killed by signal {-exit_code}" if exit_code is not None and exit_code < 0
               else f"ended (exit code {exit_code})" if exit_code is not None else "stopped answering")
        super().__init__(f"worker {number} {how} before its tunes were done (out of memory? try a smaller "
                         f"{setting('batch_size')} or fewer {setting('workers')}); the finished shards are kept: "
                         "run the same command again to resume")


def portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling whole (UsageError, OSError ...), else a RuntimeError saying what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # noqa: BLE001 - an exception class that does not pickle
        return RuntimeError(f"{type(err).__name__}: {err}")


@contextmanager
def memory_for_batch(batch_size: int, max_tokens: int) -> Iterator[None]:
    """A failed allocation of the batch becomes a UsageError saying what to lower (torch reports a
    CPU allocation failure as a RuntimeError of its allocator, CUDA's as OutOfMemoryError)."""
    import torch

    try:
        yield
    except RuntimeError as err:
        if not (isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)):
            raise
        raise UsageError(f"not enough memory to sample {batch_size:,} tunes of up to {max_tokens:,} tokens at once "
                         f"in each process: use a smaller {setting('batch_size')} (or fewer "
                         f"{setting('workers')})") from None
