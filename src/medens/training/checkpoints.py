"""Training checkpoints mirrored to an :class:`~medens.storage.ArtifactStore`, so a retried task resumes.

A pod that is killed (preempted, evicted, out of memory) never uploads its output folder, so the
checkpoint :func:`~medens.training.engine.fit` writes there is lost with it. :class:`StoreCheckpoints`
publishes that checkpoint (and the training log) to ``<uri>/<member>/epoch-NNNN`` after an epoch;
a later attempt whose output folder holds no checkpoint downloads the newest one (every sha256
checked by the store) and ``fit`` resumes from it exactly as from a local checkpoint.

Every epoch is published under its own name and the older ones are deleted only after the new
one's manifest is written: a kill in the middle of an upload leaves an incomplete folder the store
does not list (no manifest) next to the previous complete checkpoint, never a half-overwritten
one. A complete checkpoint whose files do not match their sha256 therefore means the store itself
was damaged or changed; it is refused with the store's error naming the file (docs/architecture.md section 5.6)
rather than silently trained over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from medens.storage.store import STORE_MANIFEST, ArtifactStore, LocalStore, S3Store

log = logging.getLogger(__name__)
EPOCH_DIR = re.compile(r"^epoch-(\d+)$")


def parse_frequency(text: str | int | None) -> tuple[int, float | None]:
    """``"3"`` -> every 3 epochs; ``"600s"`` -> every 600 seconds (checked at the end of an epoch).

    Returns ``(every_epochs, every_seconds)``; ``None`` or ``""`` is every epoch.
    """
    raw = str(text).strip().lower() if text is not None else ""
    if not raw:
        return 1, None
    try:
        if raw.endswith("s"):
            seconds = float(raw[:-1])
            if seconds <= 0:
                raise ValueError
            return 0, seconds
        epochs = int(raw)
        if epochs < 1:
            raise ValueError
        return epochs, None
    except ValueError:
        raise ValueError(f"checkpoint frequency must be a number of epochs (>= 1, e.g. 2) or of seconds "
                         f"(e.g. 600s); got {text!r}") from None


class StoreCheckpoints:
    """The published checkpoints of one member: ``<uri>/<member>/epoch-NNNN/{checkpoint.pt, ...}``.

    Args:
        uri: a local directory or ``s3://bucket/prefix`` holding the checkpoints of one run.
        member: the member id; one folder per member under ``uri``.
        endpoint: S3 endpoint (default ``MINIO_ENDPOINT``).
        every_epochs: publish after every ``every_epochs``-th epoch (0: not by epoch count).
        every_seconds: publish when this many seconds have passed since the last publish.
        store: an existing store for ``uri`` (tests).
    """

    def __init__(self, uri: str, member: str, *, endpoint: str | None = None, every_epochs: int = 1,
                 every_seconds: float | None = None, store: ArtifactStore | None = None) -> None:
        if not uri:
            raise ValueError("StoreCheckpoints needs a checkpoint URI")
        if every_epochs < 0 or (every_epochs == 0 and not every_seconds):
            raise ValueError("publish checkpoints every >= 1 epochs or every so many seconds")
        if not member or "/" in member or member.startswith("."):
            raise ValueError(f"invalid member id {member!r} for a checkpoint name")
        self.base_uri, self.member, self.endpoint = uri.rstrip("/"), member, endpoint
        self.every_epochs, self.every_seconds = every_epochs, every_seconds
        self._store = store
        self._last_epoch = 0
        self._last_time = time.monotonic()

    def __repr__(self) -> str:
        return f"StoreCheckpoints({self.uri!r})"

    @property
    def uri(self) -> str:
        return f"{self.base_uri}/{self.member}"

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore.from_uri(self.base_uri, endpoint=self.endpoint or None)
        return self._store

    # ------------------------------------------------------------------ reading

    def epochs(self) -> list[int]:
        """Epochs with a complete (manifest written) checkpoint in the store, oldest first."""
        out = []
        for name in self.store.list(f"{self.member}/"):
            m = EPOCH_DIR.match(name[len(self.member) + 1:])
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def restore(self, out_dir: str | os.PathLike) -> int | None:
        """Download the newest checkpoint's files into ``out_dir``; returns its epoch (``None``: none).

        Raises:
            ValueError: a file does not match its sha256 (the store's check names it).
        """
        epochs = self.epochs()
        if not epochs:
            return None
        epoch, out = epochs[-1], Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-download.", dir=out))
        try:
            try:
                got = self.store.download(self._name(epoch), tmp / "ck")
            except ValueError as e:
                raise ValueError(f"checkpoint {self.uri}/{_epoch_dir(epoch)} is damaged: {e}. Delete "
                                 f"{self.uri} to train this member from the start") from e
            for f in sorted(got.iterdir()):
                if f.name != STORE_MANIFEST:
                    os.replace(f, out / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._last_epoch, self._last_time = epoch, time.monotonic()
        log.info("restored the epoch %d checkpoint from %s", epoch, self.uri)
        return epoch

    # ------------------------------------------------------------------ writing

    def due(self, epoch: int) -> bool:
        """Whether the checkpoint of ``epoch`` is to be published (the configured frequency)."""
        if self.every_epochs and epoch - self._last_epoch >= self.every_epochs:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last_time >= self.every_seconds

    def publish(self, out_dir: str | os.PathLike, epoch: int, files: Iterable[str]) -> str:
        """Publish ``files`` of ``out_dir`` as the checkpoint of ``epoch``, then delete older ones."""
        out = Path(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=".checkpoint-publish.", dir=out))
        try:
            for name in files:
                if (out / name).is_file():
                    _link_or_copy(out / name, stage / name)
            uri = self.store.publish(stage, self._name(epoch))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        self._last_epoch, self._last_time = epoch, time.monotonic()
        for old in self._folders():
            if old != _epoch_dir(epoch):
                self._delete(f"{self.member}/{old}")
        return uri

    def clear(self) -> None:
        """Delete every checkpoint of this member (its training finished)."""
        for old in self._folders():
            self._delete(f"{self.member}/{old}")
        if isinstance(self.store, LocalStore):
            with contextlib.suppress(OSError):  # only when empty
                (self.store.root / self.member).rmdir()

    # ------------------------------------------------------------------ helpers

    def _name(self, epoch: int) -> str:
        return f"{self.member}/{_epoch_dir(epoch)}"

    def _folders(self) -> list[str]:
        """Every ``epoch-NNNN`` folder of this member, complete or not (an upload cut short)."""
        store = self.store
        if isinstance(store, LocalStore):
            d = store.root / self.member
            return sorted(p.name for p in d.iterdir() if EPOCH_DIR.match(p.name)) if d.is_dir() else []
        if isinstance(store, S3Store):
            names = {rel.split("/", 1)[0] for rel, _, _ in store.object_listing(self.member)}
            return sorted(n for n in names if EPOCH_DIR.match(n))
        return [_epoch_dir(e) for e in self.epochs()]

    def _delete(self, name: str) -> None:
        """Remove one checkpoint folder, manifest first (so it is never listed half deleted)."""
        store = self.store
        if isinstance(store, LocalStore):
            d = store.root / name
            if d.is_dir():
                hidden = d.with_name(f".{d.name}.deleted-{os.getpid()}-{time.time_ns()}")
                os.replace(d, hidden)  # one rename: gone from listings at once
                shutil.rmtree(hidden, ignore_errors=True)
            return
        if isinstance(store, S3Store):
            from minio.deleteobjects import DeleteObject

            base = store._key(name).rstrip("/") + "/"
            store._retry(lambda: store.client.remove_object(store.bucket, base + STORE_MANIFEST), f"delete {name}")
            keys = [base + rel for rel, _, _ in store.object_listing(name)]
            if keys:
                errors = store._retry(lambda: list(store.client.remove_objects(
                    store.bucket, [DeleteObject(k) for k in keys])), f"delete {name}")
                if errors:
                    log.warning("could not delete every object of %s/%s: %s", store.uri, name, errors[:3])
            return
        raise TypeError(f"cannot delete from {type(store).__name__}")


def _epoch_dir(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def _link_or_copy(src: Path, dest: Path) -> None:
    # a hard link costs nothing and stays valid: the engine replaces its checkpoint by rename
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
