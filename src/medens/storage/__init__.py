"""Artifact storage: atomic local writes (S3/MinIO store comes with the pipeline issue)."""
