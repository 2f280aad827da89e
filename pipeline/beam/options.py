"""Beam pipeline options: every Beam flag passes through; the local runner is the default."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

# Without --runner, Beam would try to download the Prism runner binary (no network offline)
# and fall back after an error; we choose the in-process runner ourselves instead.
DEFAULT_RUNNER = "DirectRunner"


def has_flag(beam_args: list[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in beam_args)


def pipeline_options(beam_args: list[str] | None = None, **overrides) -> PipelineOptions:
    """PipelineOptions from the command line's Beam flags, with --runner=DirectRunner unless given."""
    args = list(beam_args or [])
    if not has_flag(args, "--runner"):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args, **overrides)


def runner_name(options: PipelineOptions) -> str:
    from apache_beam.options.pipeline_options import StandardOptions

    return str(options.view_as(StandardOptions).runner or DEFAULT_RUNNER)


def is_local_runner(options: PipelineOptions) -> bool:
    """A runner whose workers share this machine's files (the DirectRunner, the FnApiRunner ...)."""
    from apache_beam.options.pipeline_options import StandardOptions

    return runner_name(options).rsplit(".", 1)[-1] in StandardOptions.LOCAL_RUNNERS
