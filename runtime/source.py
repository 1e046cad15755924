"""Where a model comes from: a local package directory, a bare ``.onnx`` file, or a ``file://``,
``s3://`` or ``https://`` URI. Remote packages are downloaded into a cache directory; every file
listed in ``manifest.json`` is checked against its sha256 before onnxruntime sees it.

``s3://`` uses boto3's standard configuration, so any S3-compatible store works through the usual
environment (``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` ...).
``https://`` uses the system's CA bundle (``SSL_CERT_FILE`` overrides it); plain ``http://`` is
refused, since model weights are code-like and must not travel unauthenticated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from inferstack.runtime.errors import ModelLoadError

from inferstack.errors import ChecksumMismatch, InferstackError, ManifestError
from inferstack.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_external_data,
    external_data_locations,
    load_manifest,
    sha256_file,
    verify_files,
)

#: how boto addresses the bucket of an s3:// model: path, virtual or auto
S3_ADDRESSING_STYLE_ENV = "INFERSTACK_S3_ADDRESSING_STYLE"
log = logging.getLogger("inferstack.runtime")

#: fetch(relative_path, destination, budget) downloads one object of a remote package and stops
#: with an error at the first byte past ``budget``: the store's word on the size is never trusted
Fetch = Callable[[str, Path, "_Budget"], None]
#: a single .onnx without a manifest holds its weights inside one protobuf, which cannot pass 2 GiB
_MAX_ONNX_BYTES = 2 << 30
_CHUNK = 1 << 20
#: a ``.part-*`` file of another host (a shared cache) not written to for this long is left from a
#: download that died; partials of this host are judged by their owner process instead
_STALE_PART_S = 600.0


@dataclass
class ModelSource:
    """A model ready for onnxruntime: a local, verified file (and its manifest, when it has one)."""

    uri: str
    model_path: Path
    manifest: Manifest | None

    @property
    def default_name(self) -> str:
        return self.manifest.name if self.manifest else self.model_path.stem

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else "1"


def resolve(uri: str, cache_dir: Path) -> ModelSource:
    """Fetch (if remote) and verify the model at ``uri``; raise :class:`ModelLoadError` or
    :class:`ChecksumMismatch` with a message naming the file."""
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri)
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ModelLoadError(
                f"{uri}: file:// URIs must be local (file:///path), got host {parsed.netloc!r}"
            )
        return _local(uri, path)
    if scheme == "s3":
        if not parsed.netloc:
            raise ModelLoadError(f"{uri}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return _remote(uri, cache_dir, _s3_fetcher(uri, parsed.netloc, parsed.path.lstrip("/")))
    if scheme == "https":
        return _remote(uri, cache_dir, _https_fetcher(uri))
    if scheme == "http":
        raise ModelLoadError(f"{uri}: plain http:// is not allowed for model files; use https://")
    raise ModelLoadError(f"{uri}: unsupported scheme {scheme!r}; use a path, file://, s3:// or https://")


# -- local ---------------------------------------------------------------------------------------
def _local(uri: str, path: Path) -> ModelSource:
    if path.is_dir():
        manifest = _load_manifest(path)
        _verify(path, manifest, uri)
        return ModelSource(uri, path / manifest.model_file, manifest)
    if path.is_file():
        if path.name == MANIFEST_NAME:
            return _local(uri, path.parent)
        if path.suffix != ".onnx":
            raise ModelLoadError(f"{uri}: not a model package directory or a .onnx file")
        _bare_external_data(uri, path)
        return ModelSource(uri, path, None)
    raise ModelLoadError(f"{uri}: no such file or directory")


def _load_manifest(directory: Path) -> Manifest:
    try:
        return load_manifest(directory)
    except ManifestError as e:
        raise ModelLoadError(str(e)) from None


def _verify(directory: Path, manifest: Manifest, uri: str) -> None:
    try:
        verify_files(directory, manifest)
        check_external_data(directory, manifest)
    except ChecksumMismatch as e:
        raise ChecksumMismatch(_join(uri, _relative(directory, e.path)), e.expected, e.actual) from None
    except ManifestError as e:
        raise ModelLoadError(f"{uri}: {e}") from None


def _bare_external_data(uri: str, path: Path) -> None:
    """A bare .onnx has no manifest to list its weights: its external data (if any) is the user's own
    files beside it, but never a path outside its folder."""
    try:
        locations = external_data_locations(path)
    except ManifestError as e:
        raise ModelLoadError(f"{uri}: {e}") from None
    for location in locations:
        if not (path.parent / location).resolve().is_relative_to(path.parent.resolve()):
            raise ModelLoadError(
                f"{uri}: external data location {location!r} is outside the model's folder; refused"
            )


def _relative(directory: Path, path: str) -> str:
    try:
        return Path(path).relative_to(directory).as_posix()
    except ValueError:
        return path


def _join(uri: str, rel: str) -> str:
    return uri.rstrip("/") + "/" + rel


# -- remote --------------------------------------------------------------------------------------
def _remote(uri: str, cache_dir: Path, fetch: Fetch) -> ModelSource:
    """Download a package (``.../manifest.json`` and the files it lists) or a single ``.onnx``."""
    target = Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:24]
    target.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_parts(target)
    base = uri.rstrip("/")
    if base.endswith(".onnx"):
        name = PurePosixPath(urllib.parse.urlparse(base).path).name
        dest = target / name
        _download(fetch, "", dest, uri, _Budget(_MAX_ONNX_BYTES, "a .onnx without a manifest can hold"))
        try:
            locations = external_data_locations(dest)
        except ManifestError:
            locations = []  # not ONNX: onnxruntime's refusal names the file
        if locations:
            dest.unlink()
            raise ModelLoadError(
                f"{uri}: the model loads external data; serve its package (the folder with "
                "manifest.json, which lists and hashes every file) instead of the bare .onnx"
            )
        return ModelSource(uri, dest, None)
    manifest_path = target / MANIFEST_NAME
    manifest_uri = _join(uri, MANIFEST_NAME)
    _download(fetch, MANIFEST_NAME, manifest_path, manifest_uri,
              _Budget(MAX_MANIFEST_BYTES, f"a {MANIFEST_NAME} may have"))
    try:
        manifest = load_manifest(target)
    except ManifestError as e:  # name the store's object, not the cache's copy
        raise ModelLoadError(str(e).replace(str(manifest_path), manifest_uri)) from None
    for entry in manifest.files:
        dest = target / entry.path
        if not dest.resolve().is_relative_to(target.resolve()):
            raise ModelLoadError(f"{manifest_uri}: file path {entry.path!r} leaves the package")
        if dest.is_file() and dest.stat().st_size == entry.bytes and sha256_file(dest) == entry.sha256:
            log.info("cached: %s", entry.path)
            continue
        _download(fetch, entry.path, dest, _join(uri, entry.path),
                  _Budget(entry.bytes, "the manifest lists"))
    _verify(target, manifest, uri)
    return ModelSource(uri, target / manifest.model_file, manifest)


@dataclass(frozen=True)
class _Budget:
    """The most bytes one download may bring, and where that number comes from (for the error)."""

    limit: int
    source: str

    def exceeded(self, where: str) -> ModelLoadError:
        return ModelLoadError(
            f"{where}: larger than the {self.limit} bytes {self.source}; download stopped"
        )


def _copy_bounded(read: Callable[[int], bytes], dest: Path, budget: _Budget, where: str,
                  announced: int | None) -> None:
    """Copy a response body to ``dest`` and stop at the first byte past the budget (a store that
    announces a larger size is refused before a byte is read; one that sends more than it announced
    is cut off all the same)."""
    if announced is not None and announced > budget.limit:
        raise budget.exceeded(where)
    total = 0
    with open(dest, "wb") as fh:
        while chunk := read(min(_CHUNK, budget.limit - total + 1)):
            total += len(chunk)
            if total > budget.limit:
                raise budget.exceeded(where)
            fh.write(chunk)


# -- partial downloads -------------------------------------------------------------------------
# A partial is named ``.part-<host>.<pid>.<start>.<random>``: <host> a hash of this machine's
# name, <start> the owner's start time (so a new process that got the pid of a dead one is not
# taken for the owner, as happens with pid 1 in every restarted container).


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, ``/proc/<pid>/stat`` field 22); None when the
    process does not exist. ``"0"`` where there is no /proc (the pid alone must do there)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, someone else's
            pass
        return "0"
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name start at field 3


def part_prefix(pid: int | None = None) -> str:
    """The name prefix of the partial downloads of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f".part-{_host_tag()}.{pid}.{_start_time(pid) or 'gone'}."


def _owner_alive(name: str) -> bool | None:
    """Whether the process that writes the partial ``name`` still runs; None when it cannot be told
    (an older name, or another host's process on a shared cache)."""
    parts = name[len(".part-"):].split(".")
    if len(parts) < 4 or parts[0] != _host_tag() or not parts[1].isdigit():
        return None
    return _start_time(int(parts[1])) == parts[2]


def _remove_orphaned_parts(target: Path) -> None:
    """Partial downloads of a process that died would stay and fill the disk: remove those whose
    owner is gone; ones this host cannot judge only when nobody wrote to them for 10 minutes."""
    cutoff = time.time() - _STALE_PART_S
    for part in target.rglob(".part-*"):
        try:
            alive = _owner_alive(part.name)
            if part.is_file() and (alive is False or (alive is None and part.stat().st_mtime < cutoff)):
                part.unlink()
                log.info("removed the partial download of a process that is gone: %s", part.name)
        except OSError:  # another process removed it meanwhile
            pass


def _download(fetch: Fetch, rel: str, dest: Path, where: str, budget: _Budget) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=part_prefix())
        os.close(fd)
    except OSError as e:  # e.g. a cached file where the path needs a folder
        raise ModelLoadError(f"{where}: cannot be stored in the cache ({e.strerror or e})") from None
    try:
        log.info("downloading %s", where)
        fetch(rel, Path(tmp), budget)
        os.replace(tmp, dest)
    except InferstackError:
        raise
    except Exception as e:  # network and client errors: one line naming the object
        raise ModelLoadError(f"{where}: download failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _s3_fetcher(uri: str, bucket: str, prefix: str) -> Fetch:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    # S3-compatible stores behind a custom endpoint: MinIO and Ceph generally need path-style URLs,
    # Alibaba OSS and Tencent COS refuse them (virtual-hosted only); INFERSTACK_S3_ADDRESSING_STYLE
    # (path, virtual or auto) says which, else path with a custom endpoint and boto's default without.
    style = os.environ.get(S3_ADDRESSING_STYLE_ENV) or ("path" if endpoint else None)
    if style not in (None, "path", "virtual", "auto"):
        raise ModelLoadError(f"{S3_ADDRESSING_STYLE_ENV}={style!r}: expected path, virtual or auto")
    config = Config(s3={"addressing_style": style}) if style else None
    client = boto3.client("s3", config=config)
    prefix = prefix.rstrip("/")

    def fetch(rel: str, dest: Path, budget: _Budget) -> None:
        key = f"{prefix}/{rel}" if rel else prefix
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            body = response["Body"]
            try:
                _copy_bounded(body.read, dest, budget, f"s3://{bucket}/{key}", response.get("ContentLength"))
            finally:
                body.close()  # unread bytes are dropped with the connection, not drained
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NoSuchBucket"):
                raise ModelLoadError(f"s3://{bucket}/{key}: not found") from None
            raise ModelLoadError(f"s3://{bucket}/{key}: {e}") from None
        except BotoCoreError as e:
            raise ModelLoadError(f"s3://{bucket}/{key}: {e}") from None

    return fetch


def _https_fetcher(uri: str) -> Fetch:
    base = uri.rstrip("/")
    context = ssl.create_default_context()
    cafile = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    if cafile:
        context.load_verify_locations(cafile=cafile)

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _HttpsRedirectsOnly())

    def fetch(rel: str, dest: Path, budget: _Budget) -> None:
        url = f"{base}/{urllib.parse.quote(rel)}" if rel else base
        try:
            with opener.open(url, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                announced = int(length) if length and length.isdigit() else None
                _copy_bounded(resp.read, dest, budget, url, announced)
        except urllib.error.HTTPError as e:
            raise ModelLoadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ModelLoadError(f"{url}: {reason}") from None

    return fetch


class _HttpsRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// (a store must not send the weights over plain http)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlparse(newurl).scheme.lower() != "https":
            raise ModelLoadError(f"{req.full_url}: redirected to {newurl}; only https:// is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
