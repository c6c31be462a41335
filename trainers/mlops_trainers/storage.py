"""All I/O of a run goes through fsspec: ``gs://`` (gcsfs), a local folder, or any other protocol.

URLs are joined with ``/`` (never ``os.path``). ``gs://`` honours ``STORAGE_EMULATOR_HOST`` (a
GCS emulator, e.g. in tests): gcsfs is then given that endpoint and anonymous credentials. Set
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` with an emulator, or gcsfs stalls about 60 s asking
for the bucket type over gRPC (see docs/local-cluster.md).

Listings are never cached across calls (``invalidate_cache`` first): another process, the
previous attempt of this run, may have written since.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from pathlib import Path
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

__all__ = [
    "exists",
    "filesystem",
    "get_file",
    "is_local",
    "join",
    "list_dir",
    "put_file",
    "read_bytes",
    "read_json",
    "read_text",
    "remove",
    "split_protocol",
    "write_bytes",
    "write_json",
    "write_text",
]


def split_protocol(url: str) -> tuple[str, str]:
    """``("gs", "bucket/path")`` for ``gs://bucket/path``; ``("file", "/abs/path")`` for paths."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        if protocol == "file":
            return "file", os.path.abspath(rest)
        return protocol, rest
    return "file", os.path.abspath(url)


def is_local(url: str) -> bool:
    return split_protocol(url)[0] == "file"


# How long a GCS request may wait for the server: to connect, and for its next bytes once the
# request is sent (aiohttp's sock_connect and sock_read, which restart with every chunk, so a slow
# but moving download or a large upload is not cut). gcsfs passes no timeout at all by default, so
# one stalled connection held a trainer for ever; a request that times out is retried by gcsfs
# (up to 6 tries, backing off to 32 s) and then fails the attempt, which Argo retries.
# MLOPS_STORAGE_READ_TIMEOUT_S overrides the read timeout (the tests use seconds).
STORAGE_CONNECT_TIMEOUT_S = 30.0
STORAGE_READ_TIMEOUT_S = 60.0


def request_timeout() -> Any:
    """gcsfs' ``requests_timeout``: an ``aiohttp.ClientTimeout`` with no total, so only a
    silent server times out."""
    import aiohttp

    read = float(os.environ.get("MLOPS_STORAGE_READ_TIMEOUT_S") or STORAGE_READ_TIMEOUT_S)
    return aiohttp.ClientTimeout(sock_connect=STORAGE_CONNECT_TIMEOUT_S, sock_read=read)


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path inside it."""
    protocol, path = split_protocol(url)
    options: dict[str, Any] = {}
    if protocol in ("gs", "gcs"):
        options["requests_timeout"] = request_timeout()
        emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
        if emulator not in ("", "default"):
            if not emulator.startswith(("http://", "https://")):
                emulator = f"http://{emulator}"
            options.update(endpoint_url=emulator, token="anon")
    return fsspec.filesystem(protocol, **options), path


def join(url: str, *parts: str) -> str:
    """Join URL parts with exactly one ``/``."""
    out = url.rstrip("/")
    for part in parts:
        stripped = part.strip("/")
        if stripped:
            out = f"{out}/{stripped}"
    return out


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    fs.invalidate_cache()
    return bool(fs.exists(path))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data: bytes = f.read()
    return data


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_bytes(url: str, data: bytes) -> None:
    fs, path = filesystem(url)
    if is_local(url):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        # Local: write a sibling then rename, so a reader never sees half a file. (On GCS an
        # object appears whole at the end of its upload; renames there are copies, never used.)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    # One request for an object under gcsfs' 50 MiB chunk (a multipart upload) where a file
    # opened for writing makes two (a resumable upload's start, then its data).
    fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, value: Any) -> None:
    write_text(url, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def put_file(local: str | Path, url: str) -> None:
    """Upload one local file to ``url``."""
    write_bytes(url, Path(local).read_bytes())


def get_file(url: str, local: str | Path) -> None:
    """Download ``url`` into the local file ``local``."""
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    Path(local).write_bytes(read_bytes(url))


def list_dir(url: str) -> list[str]:
    """Names (not paths) of the entries directly under ``url``; empty if it does not exist."""
    fs, path = filesystem(url)
    fs.invalidate_cache()
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    base = path.rstrip("/")
    names = []
    for entry in entries:
        name = str(entry).rstrip("/")
        name = name[len(base) + 1 :] if name.startswith(base + "/") else posixpath.basename(name)
        if name:
            names.append(name)
    return sorted(set(names))


def remove(url: str, *, recursive: bool = False) -> None:
    """Delete ``url`` (a folder with ``recursive``); a missing one is not an error."""
    fs, path = filesystem(url)
    fs.invalidate_cache()
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=recursive)
