"""Object stores behind the emulated node storage service: a local folder, or an S3 server.

Both implement :class:`StorageBackend`, an async key/value object store with streamed reads and writes.
Keys are relative POSIX paths (``hub/final/<analysis>/<filename>``): non-empty segments separated by
``/``, none of them ``.`` or ``..``, no leading ``/`` and no backslash. Every backend rejects any
other key with :class:`ValueError`, so a key built from request input can never leave the store.

Blocking I/O (file system, the synchronous ``minio`` client) runs in worker threads via
:func:`asyncio.to_thread`, so a backend is usable from any event loop, and from several at once.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import os
import secrets
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

#: Size of the chunks that :meth:`StorageBackend.open` yields (bytes).
READ_CHUNK_SIZE = 1024 * 1024
#: Part size of S3 multipart uploads; objects up to this size go up in one PUT (bytes).
S3_PART_SIZE = 8 * 1024 * 1024
#: The folder (under the root) where :class:`LocalFolderBackend` writes before it renames.
_PARTIAL_DIR = ".partial"
#: How :class:`LocalFolderBackend` creates a temporary file: a new one, never through a link.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
#: Folders a :class:`LocalFolderBackend` remembers as existing (forgotten all at once beyond).
_KNOWN_FOLDERS = 4096
#: S3 error codes that mean "there is no such object".
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"})


@runtime_checkable
class StorageBackend(Protocol):
    """An async object store with streamed reads and writes (see the module docstring for keys).

    Implementations never need a whole object in memory: :meth:`put` copies from a file-like and
    :meth:`open` yields chunks. Writes are atomic: a reader sees the old object, or the whole new one.
    """

    async def put(self, key: str, source: BinaryIO, length: int) -> None:
        """Store exactly ``length`` bytes read from ``source`` (from its current position) under ``key``.

        Replaces an existing object. Raises :class:`ValueError` for a bad key, :class:`OSError` if
        ``source`` ends before ``length`` bytes.
        """
        ...

    def open(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes, streamed in chunks of at most :data:`READ_CHUNK_SIZE`.

        A missing object raises :class:`KeyError` when iteration starts (from the first ``__anext__``),
        not from this call. The iterator is an async generator: ``aclose()`` it if you stop early.
        """
        ...

    async def get(self, key: str) -> bytes:
        """The whole object; :class:`KeyError` if it does not exist. Only for small objects."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a missing object is not an error."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    async def list(self, prefix: str) -> builtins.list[str]:
        """Every key that starts with ``prefix`` (a plain string prefix), sorted; paginated internally."""
        ...

    async def aclose(self) -> None:
        """Release connections and other resources; the stored objects stay."""
        ...


def check_key(key: str) -> str:
    """``key`` if it is a valid object key (see the module docstring); :class:`ValueError` otherwise."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def _check_prefix(prefix: str) -> str:
    if prefix.startswith("/") or "\\" in prefix or "\x00" in prefix:
        raise ValueError(f"invalid key prefix {prefix!r}")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"invalid key prefix {prefix!r}")
    return prefix


def _copy_exactly(source: BinaryIO, target: BinaryIO, length: int) -> None:
    remaining = length
    while remaining > 0:
        block = source.read(min(READ_CHUNK_SIZE, remaining))
        if not block:
            raise OSError(f"the source ended {remaining} bytes before the announced length {length}")
        target.write(block)
        remaining -= len(block)


class LocalFolderBackend:
    """Objects as files under ``root``: key ``a/b/c`` is the file ``root/a/b/c``.

    Writes go to a temporary file under ``root/.partial`` and are renamed into place with
    :func:`os.replace`, so readers never see half an object. Several instances (and processes) may
    share one root.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._partial = self.root / _PARTIAL_DIR
        # temporary names unique across instances and processes sharing the root: this process, this
        # instance, a counter (a random name per put, as mkstemp draws, cost more than the write)
        self._tmp_prefix = f"put-{secrets.token_hex(4)}-"
        self._tmp_counter = itertools.count()
        #: folders known to exist (mkdir per put cost a stat per level); recreated if removed meanwhile
        self._folders: set[Path] = set()

    def __repr__(self) -> str:
        return f"LocalFolderBackend(root={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == _PARTIAL_DIR:
            raise ValueError(f"invalid object key {key!r}: {_PARTIAL_DIR}/ is reserved")
        return self.root.joinpath(*key.split("/"))

    async def put(self, key: str, source: BinaryIO, length: int) -> None:
        """See :meth:`StorageBackend.put`."""
        path = self._path(key)
        if length < 0:
            raise ValueError("length must be >= 0")
        await asyncio.to_thread(self._put_sync, path, source, length)

    def _put_sync(self, path: Path, source: BinaryIO, length: int) -> None:
        tmp_name = f"{self._partial}/{self._tmp_prefix}{os.getpid()}-{next(self._tmp_counter)}"
        try:
            fd = os.open(tmp_name, _TMP_FLAGS, 0o600)
        except FileNotFoundError:  # the first put, or the folder was removed meanwhile
            self._partial.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp_name, _TMP_FLAGS, 0o600)
        try:
            with os.fdopen(fd, "wb") as target:
                _copy_exactly(source, target, length)
            folder = path.parent
            if folder not in self._folders:
                folder.mkdir(parents=True, exist_ok=True)
                if len(self._folders) >= _KNOWN_FOLDERS:
                    self._folders.clear()
                self._folders.add(folder)
            try:
                os.replace(tmp_name, path)
            except FileNotFoundError:  # its folder was removed since it was known
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """See :meth:`StorageBackend.open`."""
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        try:
            while True:
                block = await asyncio.to_thread(handle.read, READ_CHUNK_SIZE)
                if not block:
                    return
                yield block
        finally:
            handle.close()

    async def get(self, key: str) -> bytes:
        """See :meth:`StorageBackend.get`."""
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    async def delete(self, key: str) -> None:
        """See :meth:`StorageBackend.delete`."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            await asyncio.to_thread(path.unlink)

    async def exists(self, key: str) -> bool:
        """See :meth:`StorageBackend.exists`."""
        return await asyncio.to_thread(self._path(key).is_file)

    async def list(self, prefix: str) -> builtins.list[str]:
        """See :meth:`StorageBackend.list`."""
        _check_prefix(prefix)
        return await asyncio.to_thread(self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> builtins.list[str]:
        if prefix.split("/", 1)[0] == _PARTIAL_DIR:
            return []
        # Walk only the deepest folder the prefix names completely.
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*folder_part.split("/")) if folder_part else self.root
        if not start.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d != _PARTIAL_DIR]
            for name in filenames:
                key = (here / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def aclose(self) -> None:
        """Nothing to release: files are opened per operation."""


class S3Backend:
    """Objects in one bucket of an S3 server, through MinIO's Python client (as FLAME's storage uses).

    ``endpoint`` is ``host:port``; ``prefix`` (optional) is prepended to every key, so several
    emulators can share a bucket. The bucket is created on first use if it does not exist. Objects
    up to :data:`S3_PART_SIZE` go up in one PUT, larger ones as a multipart upload of such parts.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        prefix: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self.region = region
        if prefix:
            check_key(prefix.strip("/"))
            prefix = prefix.strip("/") + "/"
        self.prefix = prefix
        import urllib3  # here, not at module level: a local run with folder storage never loads them
        from minio import Minio
        from minio.error import S3Error

        self._s3_error: Any = S3Error
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=120.0),
            maxsize=10,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self._client: Any = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Backend(endpoint={self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(bucket_name=self.bucket):
                try:
                    self._client.make_bucket(bucket_name=self.bucket)
                except self._s3_error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
            self._bucket_ready = True

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (done automatically before the first operation)."""
        await asyncio.to_thread(self._ensure_bucket)

    async def put(self, key: str, source: BinaryIO, length: int) -> None:
        """See :meth:`StorageBackend.put`."""
        name = self._name(key)
        if length < 0:
            raise ValueError("length must be >= 0")
        await asyncio.to_thread(self._put_sync, name, source, length)

    def _put_sync(self, name: str, source: BinaryIO, length: int) -> None:
        self._ensure_bucket()
        self._client.put_object(
            bucket_name=self.bucket,
            object_name=name,
            data=source,
            length=length,
            content_type="application/octet-stream",
            part_size=S3_PART_SIZE,
            num_parallel_uploads=1,
        )

    def _get_object(self, name: str) -> Any:
        self._ensure_bucket()
        try:
            return self._client.get_object(bucket_name=self.bucket, object_name=name)
        except self._s3_error as exc:
            if exc.code in _MISSING_CODES:
                raise KeyError(name[len(self.prefix) :]) from None
            raise

    @staticmethod
    def _release(response: Any) -> None:
        response.close()
        response.release_conn()

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """See :meth:`StorageBackend.open`."""
        name = self._name(key)
        response = await asyncio.to_thread(self._get_object, name)
        try:
            while True:
                block: bytes = await asyncio.to_thread(response.read, READ_CHUNK_SIZE)
                if not block:
                    return
                yield block
        finally:
            await asyncio.to_thread(self._release, response)

    async def get(self, key: str) -> bytes:
        """See :meth:`StorageBackend.get`."""
        name = self._name(key)

        def read() -> bytes:
            response = self._get_object(name)
            try:
                return bytes(response.read())
            finally:
                self._release(response)

        return await asyncio.to_thread(read)

    async def delete(self, key: str) -> None:
        """See :meth:`StorageBackend.delete`."""
        name = self._name(key)

        def remove() -> None:
            self._ensure_bucket()
            self._client.remove_object(bucket_name=self.bucket, object_name=name)

        await asyncio.to_thread(remove)

    async def exists(self, key: str) -> bool:
        """See :meth:`StorageBackend.exists`."""
        name = self._name(key)

        def stat() -> bool:
            self._ensure_bucket()
            try:
                self._client.stat_object(bucket_name=self.bucket, object_name=name)
            except self._s3_error as exc:
                if exc.code in _MISSING_CODES:
                    return False
                raise
            return True

        return await asyncio.to_thread(stat)

    async def list(self, prefix: str) -> builtins.list[str]:
        """See :meth:`StorageBackend.list` (the client follows continuation tokens page by page)."""
        full = self.prefix + _check_prefix(prefix)

        def scan() -> list[str]:
            self._ensure_bucket()
            names: list[str] = []
            for obj in self._client.list_objects(bucket_name=self.bucket, prefix=full, recursive=True):
                name = str(obj.object_name)
                if not name.endswith("/") and not getattr(obj, "is_dir", False):
                    names.append(name[len(self.prefix) :])
            return sorted(names)

        return await asyncio.to_thread(scan)

    async def aclose(self) -> None:
        """Close the pooled connections (a later operation opens new ones)."""
        await asyncio.to_thread(self._http.clear)


__all__ = [
    "READ_CHUNK_SIZE",
    "S3_PART_SIZE",
    "LocalFolderBackend",
    "S3Backend",
    "StorageBackend",
    "check_key",
]
