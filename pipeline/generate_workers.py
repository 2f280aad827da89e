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
import queue
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
POLL_SECONDS = 0.5  # how often the parent looks at its workers while no tune arrives
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
    ``progress(n)`` is called as tunes arrive."""
    from folkrnn.model.generate import shard_path, write_shard

    context = multiprocessing.get_context("spawn")
    next_chunk = context.Value("q", 0)
    results = context.Queue()
    weights = model_bytes(model)
    procs = [context.Process(target=worker_main, name=f"folkrnn-generate-{k + 1}", daemon=True,
                             args=(k + 1, os.getpid(), weights, settings, todo, batch_size, threads, device,
                                   next_chunk, results))
             for k in range(workers)]
    shard_of = {index: (first, last) for index, first, last in todo}
    rows: dict[int, list[dict]] = {}
    finished = 0
    try:
        for proc in procs:
            proc.start()
        while finished < workers:
            try:
                message = results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                check_alive(procs, results)
                continue
            kind, *body = message
            if kind == "error":
                raise_worker_error(*body)
            if kind == "done":
                finished += 1
                continue
            (row,) = body
            index = (row["number"] - 1) // settings.shard_size
            rows.setdefault(index, []).append(row)
            if progress is not None:
                progress(1)
            first, last = shard_of[index]
            if len(rows[index]) == last - first + 1:
                write_shard(shard_path(out, index), rows.pop(index))
        if rows:  # every number was handed out once, so this is a bug
            raise RuntimeError(f"the generate workers ended with shards {sorted(rows)} unfinished")
    finally:
        stop(procs)
        results.close()


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


def check_alive(procs: list, results) -> None:
    """A worker that ended without a word (killed by a signal, the OOM killer ...) ends the run."""
    for number, proc in enumerate(procs, 1):
        code = proc.exitcode
        if code is None or code == 0:
            continue
        try:  # its last words may still be on the way
            while True:
                kind, *body = results.get(timeout=POLL_SECONDS)
                if kind == "error":
                    raise_worker_error(*body)
        except queue.Empty:
            pass
        how = f"was killed by signal {-code}" if code < 0 else f"ended with exit code {code}"
        hint = (f" (out of memory? try a smaller {setting('batch_size')} or fewer {setting('workers')})"
                if code == -signal.SIGKILL else "")
        raise WorkerDied(f"worker {number} {how}{hint}; the finished shards are kept: run the same command "
                         "again to resume")


def raise_worker_error(number: int, error: BaseException, trace: str) -> None:
    error.__cause__ = RemoteTraceback(f"in generate worker {number}:\n{trace}")
    raise error


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
        results.put(("error", number, portable(err), traceback.format_exc()))
        results.close()
        results.join_thread()
        sys.exit(1)
    results.put(("done",))


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
            results.put(("row", tune_row(tune, settings)))


class WorkerDied(UsageError):
    """A worker process ended without reporting an error (killed, out of memory ...)."""


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
