"""Beam pipeline options: every Beam flag passes through; the local runner is the default.

``check_dataflow`` says, before a command writes anything, what a Dataflow job would only find out
after staging or on its workers: the GCP extra missing, no way for the workers to get folkrnn, no
usable ``--temp_location`` (Beam would then try to create a default bucket), no project or region.
"""

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


DATAFLOW_EXTRA = "pip install -e '.[dataflow]'"
SHIP_PACKAGE = ("--extra_package dist/folkrnn-0.1.0-py3-none-any.whl (built by: pip wheel --no-deps -w dist .) "
                "or --sdk_container_image IMAGE with folkrnn installed (docs/dataflow.md)")


def check_dataflow(beam_args: list[str]) -> None:
    """A UsageError for the Dataflow mistakes found without the network; nothing for other runners."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, WorkerOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

    from folkrnn.schemas.errors import UsageError

    options = PipelineOptions(list(beam_args))
    if runner_name(options).rsplit(".", 1)[-1] != "DataflowRunner":
        return
    try:
        import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401 - present only with the GCP extra
    except ImportError:
        raise UsageError(f"--runner DataflowRunner needs Beam's GCP extra: {DATAFLOW_EXTRA}") from None
    setup, worker, cloud = (options.view_as(c) for c in (SetupOptions, WorkerOptions, GoogleCloudOptions))
    if not (setup.setup_file or setup.extra_packages or worker.sdk_container_image):
        raise UsageError(f"the Dataflow workers need folkrnn: add {SHIP_PACKAGE}")
    for name in ("project", "region"):
        if not getattr(cloud, name):
            raise UsageError(f"--runner DataflowRunner needs --{name}")
    errors = PipelineOptionsValidator(options, None).validate_gcs_path(cloud, "temp_location")
    if errors:
        raise UsageError(f"--runner DataflowRunner needs --temp_location gs://BUCKET/PATH for its temporary and "
                         f"staged files: {errors[0].strip()}")
