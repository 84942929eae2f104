"""Imported by the worker server (processes.start_early) when the command line names s3://
archives: botocore and S3's service model load there, before the workers fork from it."""
from .s3 import warm

warm()
