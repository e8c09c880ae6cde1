"""ArtifactStore: a local directory (default) or an S3/MinIO bucket prefix.

Published artifacts are directories. ``publish`` writes every file first and the store manifest
(``STORE_MANIFEST.json``: sha256 of every file) last, so a reader never takes a half-written
artifact for a complete one; locally the directory is moved into place with one rename.
``download`` verifies every file against the manifest and refuses a corrupted one, naming it.
S3 access uses the ``minio`` client; the endpoint and credentials come from arguments or the
environment (``MINIO_ENDPOINT``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or
``MINIO_ACCESS_KEY``/``MINIO_SECRET_KEY``), never from files in the repository. Connection
errors are retried with exponential backoff and end in an error naming the endpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from medens.storage.atomic import atomic_write_text
from medens.storage.checksum import checksum_problems, checksums

STORE_MANIFEST = "STORE_MANIFEST.json"
T = TypeVar("T")




def _check_name(name: str) -> str:
    parts = Path(name).parts
    if not name or name.startswith("/") or ".." in parts or any(p.startswith(".") for p in parts):
        raise ValueError(f"invalid artifact name {name!r}: use a relative path without '..' or hidden parts")
    return name.strip("/")


def verify_download(directory: Path, manifest: dict) -> None:
    """Raise ``ValueError`` naming every file that is missing or does not match its sha256."""
    bad = checksum_problems(directory, manifest["files"], "does not match its sha256 (corrupted or changed after publishing)")
    if bad:
        raise ValueError(f"refusing artifact {manifest.get('name', directory)}: " + "; ".join(bad))


class ArtifactStore(ABC):
    """Where experiment artifacts are published and read back."""

    uri: str

    @staticmethod
    def from_uri(uri: str, *, endpoint: str | None = None, **options: Any) -> ArtifactStore:
        """``s3://bucket/prefix`` -> :class:`S3Store`; anything else is a local directory."""
        if uri.startswith("s3://"):
            bucket, _, prefix = uri[5:].partition("/")
            if not bucket:
                raise ValueError(f"S3 URI {uri!r} has no bucket")
            return S3Store(bucket, prefix.strip("/"), endpoint=endpoint, **options)
        return LocalStore(uri)

    def publish(self, local_dir: str | os.PathLike, name: str) -> str:
        """Publish the directory ``local_dir`` as ``name``; returns the artifact's URI."""
        src = Path(local_dir)
        if not src.is_dir():
            raise ValueError(f"cannot publish {src}: not a directory")
        name = _check_name(name)
        files = checksums(src, exclude=(STORE_MANIFEST,))
        if not files:
            raise ValueError(f"cannot publish {src}: it holds no files")
        manifest = {"name": name, "files": files, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        return self._publish(src, name, manifest)

    def download(self, name: str, dest: str | os.PathLike) -> Path:
        """Copy artifact ``name`` to ``dest`` (replaced), verifying every checksum first."""
        name = _check_name(name)
        manifest = self.read_manifest(name)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for rel in manifest["files"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                self._get_file(f"{name}/{rel}", tmp / rel)
            verify_download(tmp, manifest)
            atomic_write_text(tmp / STORE_MANIFEST, json.dumps(manifest, indent=2))
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    @abstractmethod
    def read_manifest(self, name: str) -> dict: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Names of complete (manifest present) artifacts under ``prefix``."""

    @abstractmethod
    def _publish(self, src: Path, name: str, manifest: dict) -> str: ...

    @abstractmethod
    def _get_file(self, key: str, dest: Path) -> None: ...

    def exists(self, name: str) -> bool:
        try:
            self.read_manifest(_check_name(name))
            return True
        except FileNotFoundError:
            return False


def _replace_dir(new: Path, dest: Path) -> None:
    """Move ``new`` to ``dest``, replacing an existing directory with two renames."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class LocalStore(ArtifactStore):
    """A directory on a local or mounted file system."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def _publish(self, src: Path, name: str, manifest: dict) -> str:
        dest = self.root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for rel in manifest["files"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, tmp / rel)
            atomic_write_text(tmp / STORE_MANIFEST, json.dumps(manifest, indent=2))
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(dest)

    def read_manifest(self, name: str) -> dict:
        p = self.root / name / STORE_MANIFEST
        if not p.is_file():
            raise FileNotFoundError(f"no published artifact {name!r} in {self.root}")
        return json.loads(p.read_text())

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.parent.relative_to(self.root).as_posix() for p in self.root.rglob(STORE_MANIFEST)]
        return sorted(n for n in names if n.startswith(prefix) and not any(x.startswith(".") for x in n.split("/")))

    def _get_file(self, key: str, dest: Path) -> None:
        src = self.root / key
        if not src.is_file():
            raise ValueError(f"{key} is listed in its manifest but missing from {self.root}")
        shutil.copy2(src, dest)


class S3Store(ArtifactStore):
    """An S3-protocol bucket prefix (MinIO in the cluster), through the ``minio`` client."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, secure: bool | None = None, region: str | None = None,
                 retries: int = 4, backoff: float = 0.5, timeout: float = 10.0, create_bucket: bool = True) -> None:
        import urllib3
        from minio import Minio

        endpoint = endpoint or os.environ.get("MINIO_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise ValueError("S3 store needs an endpoint: set MINIO_ENDPOINT (e.g. minio-service.kubeflow:9000) "
                             "or pass store.endpoint")
        if endpoint.startswith(("http://", "https://")):
            scheme, _, host = endpoint.partition("://")
            secure = scheme == "https" if secure is None else secure
            endpoint = host.rstrip("/")
        elif secure is None:
            secure = os.environ.get("MINIO_SECURE", "false").lower() in ("1", "true", "yes")
        access_key = access_key or os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("MINIO_ACCESS_KEY")
        secret_key = secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("MINIO_SECRET_KEY")
        self.endpoint, self.bucket, self.prefix = endpoint, bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.retries, self.backoff = retries, backoff
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
                                   retries=urllib3.Retry(total=0, raise_on_status=False))
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure,
                            region=region or os.environ.get("AWS_DEFAULT_REGION"), http_client=http)
        if create_bucket:
            if not self._retry(lambda: self.client.bucket_exists(bucket), "check bucket"):
                self._retry(lambda: self.client.make_bucket(bucket), "create bucket")

    def __repr__(self) -> str:  # never shows credentials
        return f"S3Store(endpoint={self.endpoint!r}, uri={self.uri!r})"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        import urllib3

        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    raise ConnectionError(
                        f"cannot reach S3 endpoint {self.endpoint} to {what} after {self.retries} attempts: "
                        f"{type(e).__name__}: {e}") from e
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _publish(self, src: Path, name: str, manifest: dict) -> str:
        import io

        base = self._key(name)
        for rel in manifest["files"]:
            self._retry(lambda rel=rel: self.client.fput_object(self.bucket, f"{base}/{rel}", str(src / rel)),
                        f"upload {rel}")
        data = json.dumps(manifest, indent=2).encode()
        self._retry(lambda: self.client.put_object(self.bucket, f"{base}/{STORE_MANIFEST}", io.BytesIO(data),
                                                   len(data), content_type="application/json"), "write the manifest")
        return f"s3://{self.bucket}/{base}"

    def read_manifest(self, name: str) -> dict:
        from minio.error import S3Error

        key = f"{self._key(name)}/{STORE_MANIFEST}"

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        try:
            return json.loads(self._retry(get, f"read {key}"))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchBucket"):
                raise FileNotFoundError(f"no published artifact {name!r} in {self.uri}") from e
            raise

    def list(self, prefix: str = "") -> list[str]:
        base = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        objs = self._retry(lambda: list(self.client.list_objects(self.bucket, prefix=base, recursive=True)), "list")
        out = []
        for o in objs:
            if o.object_name.endswith("/" + STORE_MANIFEST):
                name = o.object_name[: -len(STORE_MANIFEST) - 1]
                out.append(name[len(self.prefix) + 1:] if self.prefix else name)
        return sorted(out)

    def _get_file(self, key: str, dest: Path) -> None:
        self._retry(lambda: self.client.fget_object(self.bucket, self._key(key), str(dest)), f"download {key}")

    def put_file(self, local: str | os.PathLike, key: str) -> str:
        """Upload one file (data for retraining, for example) to ``prefix/key``."""
        self._retry(lambda: self.client.fput_object(self.bucket, self._key(key), str(local)), f"upload {key}")
        return f"s3://{self.bucket}/{self._key(key)}"

    def object_size(self, key: str) -> int:
        """Bytes of the object ``prefix/key``."""
        return int(self._retry(lambda: self.client.stat_object(self.bucket, self._key(key)), f"stat {key}").size)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object ``prefix/key`` from ``offset`` (one HTTP range request)."""

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, self._key(key), offset=offset, length=length)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        data = self._retry(get, f"read {key} [{offset}, {offset + length})")
        if len(data) != length:
            raise OSError(f"{self.uri}/{key}: short read at byte {offset} ({len(data)} of {length})")
        return data

    def object_listing(self, prefix: str) -> list[tuple[str, int, str]]:
        """``(name relative to prefix/, size, ETag)`` of every object under ``prefix/`` (no download)."""
        base = self._key(prefix).rstrip("/") + "/"
        objs = self._retry(lambda: list(self.client.list_objects(self.bucket, prefix=base, recursive=True)), "list")
        return [(o.object_name[len(base):], int(o.size or 0), str(o.etag or "").strip('"')) for o in objs]

    def sync_down(self, prefix: str, dest: str | os.PathLike) -> list[Path]:
        """Download every object under ``prefix/`` (new data for retraining) into ``dest``."""
        base = self._key(prefix).rstrip("/") + "/"
        objs = self._retry(lambda: list(self.client.list_objects(self.bucket, prefix=base, recursive=True)), "list")
        out = []
        for o in objs:
            target = Path(dest) / o.object_name[len(base):]
            target.parent.mkdir(parents=True, exist_ok=True)
            self._retry(lambda o=o, t=target: self.client.fget_object(self.bucket, o.object_name, str(t)),
                        f"download {o.object_name}")
            out.append(target)
        return out
