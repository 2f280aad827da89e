"""The Beam layer: every Apache Beam transform of the pipeline, thin wrappers over pure functions.

``transforms/`` and ``model/`` know nothing of Beam; the composite ``PTransform``s that read, scrape,
ingest, generate and validate on a runner live here, above them, and the CLI commands build
pipelines from them.
"""
