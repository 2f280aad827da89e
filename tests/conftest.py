"""Shared test helpers: Beam pipelines on the in-process runner, never the Prism download."""

from __future__ import annotations

import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def local_options(*extra: str) -> PipelineOptions:
    return PipelineOptions(["--runner=DirectRunner", *extra])


@pytest.fixture
def fixtures_dir() -> str:
    return FIXTURES
