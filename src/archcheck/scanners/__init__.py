"""Checks over members' content: database files recognised in the tar stream. Pure, like the
layers: they know nothing of the pipeline, the manifest or the CLI."""
