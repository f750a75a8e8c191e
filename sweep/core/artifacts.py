"""Where a study's artifacts (checkpoints, pictures, evaluations) live, so that every machine finds them.

``run --artifacts LOCATION`` takes a folder (one that all machines of a multi-machine study
mount at the same path) or an object store (``s3://BUCKET`` through Optuna's Boto3 store,
``gs://BUCKET`` through its GCS store). The location is recorded on the study with the host
that recorded it; ``best``, ``report`` and ``dashboard`` on any machine read it from there.
Without ``--artifacts`` artifacts go beside an SQLite file, or in ``./artifacts`` for a server
database: fine on one machine, and a warning where a study's local folder is not reachable.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import optuna

from sweep.core.errors import UsageError
from sweep.core.records import ArtifactLocation, StudyKey
from sweep.core.study import default_artifact_dir

OBJECT_STORES = ("s3://", "gs://")


def resolve(storage_url: str, location: str | None) -> str:
    """The location to use for a new study: ``location`` made absolute, or the default folder."""
    if location is None:
        return str(default_artifact_dir(storage_url))
    if location.startswith(OBJECT_STORES):
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


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
            _check_bucket(location, bucket)
        return
    path = Path(location)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--artifacts {location!r}: a file, expected a folder")
    if not path.exists() and not path.parent.is_dir():
        raise UsageError(f"--artifacts {location!r}: folder {path.parent} does not exist")


def _check_bucket(location: str, bucket: str) -> None:
    """Reach the bucket now: a worker without credentials or endpoint would otherwise fail at its
    first resume point, with a traceback."""
    import boto3
    import botocore.exceptions

    try:
        boto3.client("s3").head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise UsageError(f"--artifacts {location!r}: cannot reach the bucket ({err}); a worker needs the store's "
                         "credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and, for a server "
                         "other than AWS, AWS_ENDPOINT_URL") from None


def open_store(location: str):
    """The Optuna artifact store at ``location`` (a local folder is created if missing)."""
    if location.startswith("s3://"):
        return optuna.artifacts.Boto3ArtifactStore(location[len("s3://"):])
    if location.startswith("gs://"):
        return optuna.artifacts.GCSArtifactStore(location[len("gs://"):])
    Path(location).mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(location)


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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{filename}.{os.getpid()}.tmp")
        with open_store(location_of(study, storage_url)).open_reader(artifact_id) as f, open(tmp, "wb") as out:
            out.write(f.read())
        os.replace(tmp, path)
    return path
