"""Validation reporters (`val.reporters`): what a task adds to validation beside its metrics."""
