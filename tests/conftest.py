"""Shared test helpers: the ``folkrnn`` command (in this process or as a child process), small
models, and Beam pipelines on the in-process runner (never the Prism download).

Run the command in this process (``folkrnn_main``) unless the test is about something only a real
process shows: its death (kill -9, parent-death signals), resource limits (RLIMIT_FSIZE), mount
namespaces, a hang cut short by a timeout, environment variables, what importing it loads, or the
exit code and stderr of the real entry point end to end (one such test per command). A child
process costs 2-3 s of imports; ``main`` in this process costs nothing once they are loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from folkrnn.model.network import FolkRNN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One worker per core (make test): torch's default of a thread per core in each worker
        # would put cores x cores threads on the cores, and torch's threads spin-wait for each
        # other at every step. The tests never depend on the thread count.
        import torch

        torch.set_num_threads(1)


def local_options(*extra: str):
    """Options for the in-process DirectRunner (Beam imported here: the xdist controller never needs it)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(["--runner=DirectRunner", *extra])


@pytest.fixture
def fixtures_dir() -> str:
    return FIXTURES


# --- the command line -----------------------------------------------------------------------------
def folkrnn_env(**extra: str) -> dict[str, str]:
    """This process's environment, with this tree importable (``tests.*`` too) and no .pyc written."""
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def folkrnn_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "folkrnn.pipeline.cli", *argv]


def start_folkrnn(*argv: str, env: dict[str, str] | None = None, **popen_kwargs) -> subprocess.Popen:
    """``folkrnn ARGV`` started as a child process in the repository folder; stdout and stderr are
    text pipes. For tests that act on the running process (kill it, watch its children)."""
    return subprocess.Popen(folkrnn_command(*argv), cwd=ROOT, env=env or folkrnn_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen_kwargs)


def folkrnn(*argv: str, timeout: float = 300, env: dict[str, str] | None = None, max_file_size: int | None = None,
            **run_kwargs) -> subprocess.CompletedProcess:
    """``folkrnn ARGV`` run to its end as a child process in the repository folder (output as text).

    ``max_file_size`` caps the files the child writes at that many bytes (RLIMIT_FSIZE binds root
    too, where chmod does not): a write past it fails with EFBIG, "File too large". util-linux's
    prlimit sets it, not a preexec function: Python then starts the child without fork, whose
    handlers (gRPC's, loaded with Beam in this process) can abort a forked child."""
    command = folkrnn_command(*argv)
    if max_file_size is not None:
        command = ["prlimit", f"--fsize={max_file_size}:{max_file_size}", "--", *command]
    return subprocess.run(command, cwd=ROOT, env=env or folkrnn_env(), capture_output=True,
                          text=True, timeout=timeout, **run_kwargs)


@pytest.fixture
def folkrnn_main(capsys) -> Callable[..., subprocess.CompletedProcess]:
    """``folkrnn_main(*argv)``: ``folkrnn.pipeline.cli.main(argv)`` in this process, its exit code and
    what it printed, as ``folkrnn()`` gives them for a child process."""
    from folkrnn.pipeline import cli

    def run(*argv: str) -> subprocess.CompletedProcess:
        capsys.readouterr()  # only this command's output
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["folkrnn", *argv], code, captured.out, captured.err)

    return run


# --- models ---------------------------------------------------------------------------------------
def small_model(seed: int = 0, layers: int = 2, units: int = 16, dropout: float = 0.5, *, noise: float = 0.3,
                end_bias: float = 0.0, training: bool = False) -> FolkRNN:
    """A small FolkRNN, the same for the same arguments: torch's initialisation from ``seed``, then
    every parameter moved by ``noise`` x N(0, 1) off its special initial value (zero biases, c0 = 0,
    orthogonal blocks), and ``end_bias`` added to the </s> logit (a few dozen tokens a tune keeps
    sampling quick). In eval mode unless ``training``."""
    import torch

    from folkrnn.model.network import FolkRNN, ModelConfig
    from folkrnn.schemas.vocab import END_ID

    torch.manual_seed(seed)
    model = FolkRNN(ModelConfig(n_layers=layers, n_units=units, dropout=dropout))
    with torch.no_grad():
        if noise:
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
        if end_bias:
            model.out.bias[END_ID] += end_bias
    return model.train(training)
