"""Artifact storage: atomic local writes, and an ArtifactStore over a directory or S3/MinIO."""

from medens.storage.store import STORE_MANIFEST, ArtifactStore, LocalStore, S3Store

__all__ = ["STORE_MANIFEST", "ArtifactStore", "LocalStore", "S3Store"]
