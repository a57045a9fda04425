"""Datasets in object storage or on the web (``s3://``, ``https://``), fetched once per version.

The data stage's unit (``kubetrain.workloads.fetch``) copies ``dataset.uri`` into the job's
storage through fsspec (s3fs for S3 and S3-compatible endpoints, aiohttp for https), under a
folder named after the URI and the object's version (its ETag; for a prefix, the ETags of all
its objects), and writes ``data/remote/current.json``. Every other unit (augmentation, folds,
trials, training, explanation) reads that local copy; a rerun whose objects did not change
fetches nothing. Credentials come from the environment (a pod gets them from the Secret named in
``dataset.credentials.secret``) and never appear in a message: errors name ``spec.dataset.uri``
and say what is wrong in words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..api.spec import DatasetSpec, is_remote
from .base import DatasetError

REMOTE_DIR = Path("data") / "remote"
CURRENT = "current.json"
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
ATTEMPTS = 3
"""Tries against an endpoint that does not answer, 1 s then 2 s apart."""


class DataUnavailable(DatasetError):
    """The data cannot be had: a missing bucket or object, refused credentials, an endpoint that
    does not answer. The message names spec.dataset.uri and holds no credentials."""


@dataclass
class LocalCopy:
    """A fetched version of a remote dataset, in the job's storage."""

    uri: str
    version: str
    path: str
    files: int
    bytes: int
    fetched: bool = True
    """False when the copy was already there (a rerun, another attempt): nothing was fetched."""
    seconds: float = 0.0


def local_copy(uri: str, storage: Path | None) -> Path:
    """Where the units read a remote dataset: the data stage's copy in the job's storage."""
    if storage is None:
        raise DatasetError(f"dataset.uri: {uri} is remote; only a unit with the job's storage "
                           "(where the data stage copies it) can read it")
    try:
        current = json.loads((storage / REMOTE_DIR / CURRENT).read_text())
    except (OSError, json.JSONDecodeError):
        current = {}
    if current.get("uri") != uri or not Path(current.get("path", "")).exists():
        raise DatasetError(f"dataset.uri: {uri} has not been fetched into the job's storage "
                           "yet (the data stage runs first)")
    return Path(current["path"])


def _options(spec: DatasetSpec) -> dict[str, Any]:
    if spec.uri and spec.uri.startswith("s3://"):
        return {"endpoint_url": spec.endpoint} if spec.endpoint else {}
    return {}


def _scrub(text: str) -> str:
    """The text with any credential of the environment replaced."""
    for name in CREDENTIAL_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _explain(uri: str, spec: DatasetSpec, error: BaseException) -> DataUnavailable:
    """A user's words for what fsspec, s3fs and botocore raise."""
    name = type(error).__name__
    text = _scrub(str(error))
    where = f" at {spec.endpoint}" if spec.endpoint else ""
    creds = ("check dataset.credentials.secret (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or, "
             "locally, the AWS_* environment variables")
    if isinstance(error, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text \
            or "404" in text:
        return DataUnavailable(f"dataset.uri: {uri} does not exist{where} (no such bucket or "
                               "object); check the bucket and the key")
    if isinstance(error, PermissionError) or any(
            code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                      "AccessDenied", "403", "Forbidden")):
        return DataUnavailable(f"dataset.uri: {uri}{where}: access was refused; {creds}")
    if "NoCredentials" in name or "Unable to locate credentials" in text:
        return DataUnavailable(f"dataset.uri: {uri}: no credentials; {creds}")
    return DataUnavailable(f"dataset.uri: {uri}{where}: cannot be read, the endpoint does "
                           f"not answer or refused the request ({name}: {text[:200]})")


def _objects(fs: Any, path: str, folder: bool) -> dict[str, dict[str, Any]]:
    """The objects to copy (path -> info), one for a file, every object under a prefix."""
    if folder:
        found = fs.find(path, detail=True)
        objects = {p: info for p, info in found.items() if info.get("type") != "directory"}
        if not objects:
            raise FileNotFoundError(path)
        return dict(objects)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(path)
    return {path: info}


def _version(objects: dict[str, dict[str, Any]]) -> str:
    """The dataset's version: the objects' ETags (else Last-Modified and size)."""
    parts = []
    for path in sorted(objects):
        info = objects[path]
        tag = info.get("ETag") or info.get("etag") or (
            f"{info.get('LastModified') or info.get('Last-Modified') or ''}:{info.get('size')}")
        parts.append(f"{path}={str(tag).strip(chr(34))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def fetch(spec: DatasetSpec, storage: Path) -> LocalCopy:
    """Copy ``spec.uri`` into the job's storage unless this version is there already."""
    import fsspec  # imported here: only the data stage's unit needs it

    uri = spec.uri
    assert uri is not None and is_remote(uri)
    started = time.time()
    folder = spec.is_folder
    root = storage / REMOTE_DIR
    objects: dict[str, dict[str, Any]] = {}
    for attempt in range(ATTEMPTS):
        try:
            fs, path = fsspec.core.url_to_fs(uri, **_options(spec))
            objects = _objects(fs, path.rstrip("/") if folder else path, folder)
            break
        except (FileNotFoundError, PermissionError, IsADirectoryError) as error:
            if isinstance(error, IsADirectoryError):
                raise DataUnavailable(
                    f"dataset.uri: {uri} is a folder (prefix); format "
                    f"{spec.resolved_format} needs one object") from None
            raise _explain(uri, spec, error) from None
        except Exception as error:  # botocore and aiohttp errors: no common base class
            explained = _explain(uri, spec, error)
            if "does not answer" not in str(explained) or attempt == ATTEMPTS - 1:
                raise explained from None
            time.sleep(2 ** attempt)
    version = _version(objects)
    key = hashlib.sha256(uri.encode()).hexdigest()[:12]
    target = root / f"{key}-{version}"
    name = path.rstrip("/").rsplit("/", 1)[-1] or "data"
    local = target / name
    size = sum(int(info.get("size") or 0) for info in objects.values())
    if local.exists():
        copy = LocalCopy(uri, version, str(local), len(objects), size, fetched=False,
                         seconds=round(time.time() - started, 3))
        _write_current(root, copy)
        return copy
    tmp = root / f".fetch-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        base = path.rstrip("/")
        for source in objects:
            relative = source[len(base):].lstrip("/") if folder else name
            destination = tmp / name / relative if folder else tmp / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(source, str(destination))
        os.replace(tmp, target)  # whole or not at all: a killed fetch leaves only .fetch-*
    except Exception as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain(uri, spec, error) from None
    # Older versions of the same URI are not read again.
    for old in root.glob(f"{key}-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    copy = LocalCopy(uri, version, str(local), len(objects), size,
                     seconds=round(time.time() - started, 3))
    _write_current(root, copy)
    return copy


def _write_current(root: Path, copy: LocalCopy) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{CURRENT}.{os.getpid()}"
    tmp.write_text(json.dumps(asdict(copy), indent=1))
    os.replace(tmp, root / CURRENT)
