"""The whole path on Dataflow, as far as it can be checked without credentials or a network.

* ``compile``, ``query`` (and every dataset reader) read a dataset on an object store: the same
  code path as ``gs://`` (``FileSystems`` -> a Beam ``FileSystem``), here through ``memfs://``
  (tests/memfs.py, an in-memory filesystem that behaves as gs:// does). Google's own GCS client
  is not exercised: no test reaches gs://.
* The ingest, generate and validate pipelines are built with ``--runner DataflowRunner --dry_run``
  (Beam's TestOptions: the DataflowRunner translates the pipeline and builds the job, then returns
  before it makes an API client, stages a file or submits anything). The job is checked as the
  service would get it: its steps, the package staged for the workers (``--extra_package`` with the
  wheel built from this tree, or ``--sdk_container_image``), and, for generate, the GPU workers
  (``--dataflow_service_options worker_accelerator=...``). The environment part of the request is
  built by Beam's own ``apiclient.Environment`` from the same options, as ``create_job_description``
  does once the files are staged; the staging upload itself (GCS) is the one step not run.
* The Dataflow mistakes found before anything is written (``check_dataflow``) are one line.

Needs the ``dataflow`` extra (apache-beam[gcp]), which ``make test`` installs.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import ROOT
from tests.memfs import MemoryFileSystem, upload_folder
from tests.test_books import run_compile, write_dataset

GPU = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
IMAGE = "europe-west1-docker.pkg.dev/my-project/folkrnn/dataflow-gpu:0.1.0"
# Dummy project, region and bucket names that pass Beam's checks (a bucket name it rejects would
# make Beam try to create a default bucket over the network).
CLOUD = ("--project=my-project", "--region=europe-west1", "--temp_location=gs://my-bucket/tmp",
         "--staging_location=gs://my-bucket/staging")


@pytest.fixture
def memfs():
    MemoryFileSystem.clear()
    yield MemoryFileSystem.objects
    MemoryFileSystem.clear()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel of this tree, as docs/dataflow.md has it built for --extra_package (offline)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "out", "build", "*.egg-info", "__pycache__", ".*cache", ".hypothesis"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (path,) = glob.glob(str(out / "folkrnn-*.whl"))
    return path


# --- reading datasets from an object store -------------------------------------------------------
@pytest.fixture
def run_folder(tmp_path) -> str:
    """A generate run folder: generated/ shards (with findings) and the manifest naming the checkpoint."""
    run = tmp_path / "run"
    write_dataset(str(run / "generated"), range(1, 41), shards=3)
    manifest = {"settings": {"checkpoint_id": "test-checkpoint"}, "checkpoint": "gs://my-bucket/demo.pt",
                "checkpoint_name": "the dance model"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    return str(run)


def compiled(out: str) -> dict[str, bytes]:
    """The ABC volumes and the corpus of a compile output, by path under it (reports hold timings)."""
    found = {}
    for path in sorted(glob.glob(os.path.join(out, "**", "*"), recursive=True)):
        if os.path.isfile(path) and not path.endswith(".report.json"):
            found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


def test_compile_reads_a_dataset_on_an_object_store(run_folder, memfs, tmp_path) -> None:
    upload_folder(run_folder, "memfs://bucket/run")
    # a writer's temporary object beside the shards is not read (its rows would double tunes 1-40)
    memfs["memfs://bucket/run/generated/.part-00000.parquet.0123abcd.tmp"] = memfs[
        "memfs://bucket/run/generated/part-00000.parquet"]
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")

    assert run_compile(os.path.join(run_folder, "generated"), "--out", local, "--per-volume", "25", "--no-pdf",
                       "--quiet") == 0
    assert run_compile("memfs://bucket/run/generated", "--out", remote, "--per-volume", "25", "--no-pdf",
                       "--quiet") == 0

    assert compiled(remote) == compiled(local)
    assert set(compiled(local)) >= {"volumes/folkrnn-volume-01.abc", "volumes/folkrnn-volume-02.abc"}
    report = json.load(open(os.path.join(remote, "volumes", "folkrnn-volume-01.report.json")))
    assert report["tunes"] == 25 and report["checkpoints"][0]["name"] == "the dance model"  # the remote manifest


def test_compile_typesets_a_remote_dataset_into_a_local_pdf(run_folder, memfs, tmp_path) -> None:
    upload_folder(os.path.join(run_folder, "generated"), "memfs://bucket/generated")
    out = str(tmp_path / "out")
    assert run_compile("memfs://bucket/generated", "--out", out, "--per-volume", "10", "--quiet") == 0
    assert os.path.getsize(os.path.join(out, "volumes", "folkrnn-volume-01.pdf")) > 1000


def test_compile_to_a_bucket_is_one_line(run_folder, folkrnn_main) -> None:
    result = folkrnn_main("compile", os.path.join(run_folder, "generated"), "--out", "gs://my-bucket/compiled",
                          "--no-pdf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("folkrnn compile: error: --out gs://my-bucket/compiled: volumes are typeset "
                                    "where compile runs, so --out is a local folder")


def test_query_reads_a_hive_partitioned_corpus_on_an_object_store(run_folder, memfs, tmp_path, folkrnn_main):
    out = str(tmp_path / "out")
    assert run_compile(os.path.join(run_folder, "generated"), "--out", out, "--per-volume", "15", "--no-pdf",
                       "--quiet") == 0
    upload_folder(os.path.join(out, "corpus"), "memfs://bucket/corpus")
    assert sorted(name.rsplit("/", 2)[1] for name in memfs) == ["volume=1", "volume=2", "volume=3"]

    remote = folkrnn_main("query", "memfs://bucket/corpus", "--where", "volume = 2 AND valid", "--format", "csv",
                          "--columns", "number,volume,meter")
    local = folkrnn_main("query", os.path.join(out, "corpus"), "--where", "volume = 2 AND valid", "--format", "csv",
                         "--columns", "number,volume,meter")

    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and remote.stdout.count("\n") > 5


def test_the_arrow_filesystem_over_beam_lists_and_reads_like_a_local_one(memfs, tmp_path) -> None:
    import pyarrow.fs as pafs

    from folkrnn.pipeline.beam.storage import arrow_filesystem

    local = tmp_path / "corpus"
    for name, data in (("volume=1/part-0.parquet", b"one"), ("volume=2/part-0.parquet", b"two!"), ("notes", b"")):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)
    upload_folder(str(local), "memfs://bucket/corpus")
    remote, here = arrow_filesystem("memfs://bucket/corpus"), pafs.LocalFileSystem()

    def listing(filesystem, base: str, recursive: bool) -> list[tuple[str, str, int | None]]:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive))
        return sorted((i.path[len(base):], i.type.name, i.size if i.is_file else None) for i in infos)

    for recursive in (False, True):
        assert listing(remote, "bucket/corpus", recursive) == listing(here, str(local), recursive)
    assert remote.get_file_info("bucket/corpus/volume=2").type == pafs.FileType.Directory
    assert remote.get_file_info("bucket/corpus/nothing").type == pafs.FileType.NotFound
    with remote.open_input_file("bucket/corpus/volume=2/part-0.parquet") as handle:
        assert handle.read() == b"two!"
    with pytest.raises(NotImplementedError):
        remote.delete_file("bucket/corpus/notes")


@pytest.mark.parametrize("path, message", [
    ("memfs://bucket/none", "no dataset at memfs://bucket/none"),
    ("memfs://bucket/notes", "no Parquet files in memfs://bucket/notes"),
    ("memfs://bucket/notes/a.txt", "memfs://bucket/notes/a.txt is not a .parquet file"),
])
def test_a_remote_path_that_is_no_dataset_is_one_line(memfs, folkrnn_main, path, message) -> None:
    memfs["memfs://bucket/notes/a.txt"] = b"x"
    result = folkrnn_main("query", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"folkrnn query: error: {message}"), result.stderr


# --- translating the pipelines for Dataflow ------------------------------------------------------
def translate(flags: list[str], build) -> tuple:
    """Build a pipeline with ``build(pipeline)`` and run it on the DataflowRunner with --dry_run:
    (the job, the environment request that Beam makes from the same options)."""
    import apache_beam as beam
    from apache_beam.runners.dataflow.internal import apiclient

    from folkrnn.pipeline.beam.options import pipeline_options

    pipeline = beam.Pipeline(options=pipeline_options(["--runner=DataflowRunner", "--dry_run=True", *flags]))
    build(pipeline)
    job = pipeline.run().job  # dry run: translated, the job made, nothing staged or submitted
    environment = apiclient.Environment(
        packages=[], options=job.options, environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url="gs://my-bucket/staging/pipeline.pb", proto_pipeline=job.proto_pipeline).proto
    return job, environment


def steps(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def staged(job) -> dict[str, tuple[str, str]]:
    """staged name -> (local path, container image) of every file the workers are to get."""
    from apache_beam.portability.api import beam_runner_api_pb2 as runner_api

    found = {}
    for environment in job.proto_pipeline.components.environments.values():
        image = runner_api.DockerPayload.FromString(environment.payload).container_image
        for dependency in environment.dependencies:
            name = runner_api.ArtifactStagingToRolePayload.FromString(dependency.role_payload).staged_name
            found[name] = (runner_api.ArtifactFilePayload.FromString(dependency.type_payload).path, image)
    return found


@pytest.fixture(autouse=True)
def stager_temporaries(tmp_path, monkeypatch):
    """Beam's stager copies what it stages into tempfile's folder: keep it in the test's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_ingest_translates_for_dataflow_with_the_wheel_staged(wheel) -> None:
    import apache_beam as beam

    from folkrnn.pipeline.run_ingest import build_ingest, plan_sources

    plan = plan_sources(["gs://my-bucket/abc/**", "https://example.org/tune.abc"])
    job, environment = translate(
        [*CLOUD, "--extra_package", wheel, "--experiments=use_runner_v2"],
        lambda p: build_ingest(p, plan, "gs://my-bucket/ingest/.staging-1", num_shards=4))

    assert {"ReadSources", "Ingest", "Write_tunes", "Write_duplicates", "Write_rejects", "Summarize",
            "WriteSummary"} <= steps(job)
    wheel_name = os.path.basename(wheel)
    assert staged(job)[wheel_name][0] == wheel
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert staged(job)[wheel_name][1].endswith(f"beam_python{python}_sdk:{beam.__version__}")  # Beam's image
    assert "use_runner_v2" in environment.experiments
    from apache_beam.runners.dataflow.internal import apiclient

    assert job.proto.type_ == apiclient.dataflow.JobType.JOB_TYPE_BATCH


def test_generate_translates_for_gpu_workers_in_the_container(wheel) -> None:
    import apache_beam as beam

    from folkrnn.model.generate import RunSettings
    from folkrnn.pipeline.beam.generate import GenerateTunes

    settings = RunSettings(checkpoint_id="gs://my-bucket/models/demo.pt", num_tunes=100_000, shard_size=1000)
    job, environment = translate(
        [*CLOUD, "--sdk_container_image", IMAGE, "--experiments=use_runner_v2", "--machine_type=n1-standard-8",
         "--dataflow_service_options", GPU],
        lambda p: (p | "ShardRanges" >> beam.Create(settings.shards())
                   | "Generate" >> GenerateTunes("gs://my-bucket/models/demo.pt", settings, "gs://my-bucket/run",
                                                 1024, "cuda")))

    assert {"ShardRanges", "Generate", "Generate/SpreadShards", "Generate/SampleShard"} <= steps(job)
    assert list(environment.service_options) == [GPU]
    assert "use_runner_v2" in environment.experiments
    pool = environment.worker_pools[0]
    assert pool.machine_type == "n1-standard-8"
    assert pool.worker_harness_container_image == IMAGE
    assert [image.container_image for image in pool.sdk_harness_container_images] == [IMAGE]
    # folkrnn is in the image: nothing of ours is staged beside it
    assert not [name for name in staged(job) if name.endswith((".whl", ".tar.gz"))]


def test_validate_translates_for_dataflow(wheel) -> None:
    import apache_beam as beam

    from folkrnn.pipeline.beam.validate import ValidateShards

    shards = [f"gs://my-bucket/run/generated/part-{k:05d}.parquet" for k in range(3)]
    job, environment = translate(
        [*CLOUD, "--extra_package", wheel],
        lambda p: (p | "Shards" >> beam.Create(list(enumerate(shards)))
                   | "Validate" >> ValidateShards(True, "gs://my-bucket/tmp/summary.json", len(shards))))

    assert {"Shards", "Validate/SpreadShards", "Validate/ValidateShard", "Validate/AllShards",
            "Validate/Summarize", "Validate/WriteSummary"} <= steps(job)
    assert os.path.basename(wheel) in staged(job)
    assert not environment.service_options  # no GPU asked for, none given


def test_validate_dry_run_on_dataflow_from_the_command_line(wheel, memfs, run_folder, folkrnn_main) -> None:
    upload_folder(os.path.join(run_folder, "generated"), "memfs://bucket/generated")
    before = dict(memfs)
    result = folkrnn_main("validate", "memfs://bucket/generated", "--runner", "DataflowRunner", "--dry_run=True",
                          *CLOUD, "--extra_package", wheel)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("validate: --dry_run: the pipeline was built and translated")
    assert memfs == before


# --- Dataflow mistakes, said before anything is written ------------------------------------------
@pytest.mark.parametrize("flags, message", [
    ((*CLOUD,), "the Dataflow workers need folkrnn: add --extra_package dist/folkrnn-0.1.0-py3-none-any.whl"),
    (("--project=my-project", "--temp_location=gs://my-bucket/tmp", "--sdk_container_image", IMAGE),
     "--runner DataflowRunner needs --region"),
    (("--project=my-project", "--region=europe-west1", "--temp_location=/tmp/x", "--sdk_container_image", IMAGE),
     "--runner DataflowRunner needs --temp_location gs://BUCKET/PATH"),
    (("--project=my-project", "--region=europe-west1", "--temp_location=gs://b/tmp", "--sdk_container_image", IMAGE),
     "--runner DataflowRunner needs --temp_location gs://BUCKET/PATH"),  # a bucket name GCS refuses
])
def test_dataflow_mistakes_are_one_line_before_anything_is_written(tmp_path, folkrnn_main, flags, message) -> None:
    out = tmp_path / "generated"
    result = folkrnn_main("generate", str(tmp_path / "model.pt"), "--out", str(out), "--runner", "DataflowRunner",
                          *flags)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"folkrnn generate: error: {message}"), result.stderr
    assert not out.exists()


def test_validate_of_a_local_dataset_on_dataflow_is_one_line(run_folder, folkrnn_main) -> None:
    dataset = os.path.join(run_folder, "generated")
    before = {name: open(os.path.join(dataset, name), "rb").read() for name in os.listdir(dataset)}
    result = folkrnn_main("validate", dataset, "--runner", "DataflowRunner", *CLOUD, "--sdk_container_image", IMAGE)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is on this machine, which the workers of --runner DataflowRunner cannot read" in result.stderr
    assert {name: open(os.path.join(dataset, name), "rb").read() for name in os.listdir(dataset)} == before
