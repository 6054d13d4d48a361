"""catalog-agent: move a pipeline step's files through an S3 data catalog."""

__version__ = "0.1.0"
