"""Where a study's artifacts (checkpoints, pictures, evaluations) live, so that every machine finds them.

``run --artifacts LOCATION`` takes a folder (one that all machines of a multi-machine study
mount at the same path) or an object store (``s3://BUCKET`` through Optuna's Boto3 store,
``gs://BUCKET`` through its GCS store). The location is recorded on the study with the host
that recorded it; ``best``, ``report`` and ``dashboard`` on any machine read it from there.
Without ``--artifacts`` artifacts go beside an SQLite file, or in ``./artifacts`` for a server
database: fine on one machine, and a warning where a study's local folder is not reachable.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import time
from pathlib import Path

import optuna

from sweep.core.errors import UsageError, described, is_outage, warn
from sweep.core.records import ArtifactLocation, StudyKey
from sweep.core.study import default_artifact_dir

OBJECT_STORES = ("s3://", "gs://")
S3_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")  # the names boto3 sends at all (AWS's own rules are stricter)
# Waits between tries of a store that is down (``patiently``): about 60 s in all, well inside the
# heartbeat's 90 s grace period, so an outage shorter than that costs no trial.
OUTAGE_WAITS = (1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0)


def resolve(storage_url: str, location: str | None) -> str:
    """The location to use for a new study: ``location`` made absolute, or the default folder."""
    if location is None:
        return str(default_artifact_dir(storage_url))
    if location.rstrip("/") in ("s3:", "gs:"):  # what ``s3://$BUCKET`` gives with the variable unset
        raise UsageError(f"--artifacts {location!r}: no bucket named; give one, e.g. {location.rstrip('/')}//my-bucket")
    if location.startswith(OBJECT_STORES):
        return location.rstrip("/")
    if "://" in location:
        raise UsageError(f"--artifacts {location!r}: expected a folder, s3://BUCKET or gs://BUCKET")
    return str(Path(location).expanduser().resolve())  # absolute: every later command finds it from anywhere


def check(location: str) -> None:
    """Refuse a location that cannot work, before a study is touched (one line)."""
    if location.startswith(OBJECT_STORES):
        bucket = location.split("://", 1)[1]
        if not bucket or "/" in bucket:
            raise UsageError(f"--artifacts {location!r}: give a bucket, e.g. s3://my-bucket (prefixes are not supported)")
        module = "boto3" if location.startswith("s3://") else "google.cloud.storage"
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"--artifacts {location!r}: needs {module.split('.')[0]}; pip install it") from None
        if location.startswith("s3://"):
            if not S3_BUCKET.fullmatch(bucket):  # boto3 refuses it before asking, in a message of several lines
                raise UsageError(f"--artifacts {location!r}: not a bucket name (S3 bucket names are letters, digits, "
                                 "'.', '-' and '_', e.g. s3://my-bucket)")
            _check_bucket(bucket, f"--artifacts {location!r}")
        return
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--artifacts {location!r}: a file, expected a folder")
    if not path.exists() and not path.parent.is_dir():
        raise UsageError(f"--artifacts {location!r}: folder {path.parent} does not exist")


def check_recorded(study: optuna.Study, location: str) -> None:
    """Reach the object store a study recorded (``run`` reopening it, ``predict --study``, ``best
    --evaluate``), so that an endpoint that is down is one line naming it, not a traceback at the
    first upload; a recorded folder that became a file likewise."""
    label = f"study {study.study_name!r} keeps its artifacts in {location}"
    if location.startswith("s3://"):
        _check_bucket(location[len("s3://"):], label)
    elif not location.startswith(OBJECT_STORES) and Path(location).exists() and not Path(location).is_dir():
        raise UsageError(f"{label}: a file now, expected a folder")


def _check_bucket(bucket: str, label: str) -> None:
    """Reach the bucket now: a worker without credentials or endpoint would otherwise fail at its
    first resume point, with a traceback."""
    import boto3
    import botocore.exceptions

    try:
        boto3.client("s3").head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        reason = " ".join(str(err).split())  # one line, whatever the client wrote
        raise UsageError(f"{label}: cannot reach the bucket ({reason}); a worker needs the store's "
                         "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for a server "
                         "other than AWS, AWS_ENDPOINT_URL") from None


def open_store(location: str, create: bool = True):
    """The Optuna artifact store at ``location``; a missing local folder is created, unless the
    caller only reads (``create=False``: a view leaves no empty folder behind)."""
    if location.startswith("s3://"):
        return optuna.artifacts.Boto3ArtifactStore(location[len("s3://"):])
    if location.startswith("gs://"):
        return optuna.artifacts.GCSArtifactStore(location[len("gs://"):])
    try:
        if create:
            Path(location).mkdir(parents=True, exist_ok=True)
        elif Path(location).exists() and not Path(location).is_dir():  # a reader: missing is fine, a file is not
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), location)
    except OSError as err:  # replaced by a file, or on a mount that went away
        raise UsageError(f"artifact location {location}: cannot use it as a folder ({err.strerror or err})") from None
    return _FolderStore(location)


class _FolderStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's folder store, which makes its folder again at each write: a folder deleted while a
    study runs costs the artifacts it held, not the uploads of every trial after."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.folder = Path(location)

    def write(self, artifact_id, content_body) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        super().write(artifact_id, content_body)


def record(study: optuna.Study, location: str) -> None:
    study.set_user_attr(StudyKey.ARTIFACTS, ArtifactLocation(location, socket.gethostname()).to_dict())


def location_of(study: optuna.Study, storage_url: str, warn: bool = True) -> str:
    """The study's recorded location (or the default for studies that predate the record).

    Warns once where a local folder recorded on another machine is not reachable here.
    """
    recorded = ArtifactLocation.of_study(study)
    if recorded is None:
        return str(default_artifact_dir(storage_url))
    location, host = recorded.location, recorded.host
    local = not location.startswith(OBJECT_STORES)
    if warn and local and host != socket.gethostname() and not Path(location).is_dir():
        print(f"warning: study {study.study_name!r} keeps its artifacts in {location} on {host}, which this "
              f"machine cannot see; run with --artifacts on a shared folder or object store", file=sys.stderr)
    return location



def cache_folder() -> Path:
    """This machine's cache (``$SEGNET_CACHE_DIR``, data.cache.cache_dir): local copies of what lives
    in the artifact location, beside the preprocessed slices."""
    from data.cache import cache_dir  # here: read-only commands that never fetch load no data package

    return cache_dir()


def fetch(study: optuna.Study, storage_url: str, filename: str) -> Path | None:
    """The study's latest artifact named ``filename`` as a file on this machine, or None if it has none.

    Downloaded once into the cache (an artifact id is never reused, so a cached copy is never stale).
    """
    metas = [m for m in optuna.artifacts.get_all_artifact_meta(study) if m.filename == filename]
    if not metas:
        return None
    artifact_id = metas[-1].artifact_id  # each upload adds one; the last is the latest
    path = cache_folder() / "artifacts" / artifact_id / filename
    if not path.is_file():
        location = location_of(study, storage_url)
        check_recorded(study, location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{filename}.{os.getpid()}.tmp")
        try:
            with open_store(location, create=False).open_reader(artifact_id) as f, open(tmp, "wb") as out:
                out.write(f.read())
            os.replace(tmp, path)
        except optuna.artifacts.exceptions.ArtifactNotFound:
            raise UsageError(f"study {study.study_name!r}: its {filename} is missing from its artifact location "
                             f"{location} (moved or deleted?)") from None
        finally:
            tmp.unlink(missing_ok=True)  # an interrupted download leaves no part of a file
    return path


def patiently(call, what: str):
    """``call()``, tried again after each of ``OUTAGE_WAITS`` while the store or folder is down
    (``errors.is_outage``), with a warning line per failed try; the last try's error is raised."""
    for wait in OUTAGE_WAITS:
        try:
            return call()
        except Exception as err:
            if not is_outage(err):
                raise
            warn(f"{what}: {described(err)}; trying again in {wait:g} s")
        time.sleep(wait)
    return call()
