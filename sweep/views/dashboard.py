"""`python -m sweep dashboard`: optuna-dashboard on the study's storage, with its artifacts."""

from __future__ import annotations

import optuna
import optuna_dashboard

from sweep.core import artifacts
from sweep.core import study as st
from sweep.core.errors import UsageError
from sweep.core.records import ArtifactLocation


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until Ctrl-C or SIGTERM, which end it normally. Prints the URL first, so a person (or a
    test) knows where to look."""
    st.check_storage_url(storage_url)
    st.require_existing_sqlite(storage_url)  # optuna-dashboard would create an empty database and show nothing
    storage = st.make_storage(storage_url, heartbeat=False)
    location = _location(storage, storage_url)
    # The dashboard can upload artifacts too: open_store creates a missing folder, which keeps that working.
    store = artifacts.open_store(location)
    print(f"optuna-dashboard: http://{_url_host(host)}:{port}/dashboard  (storage {storage_url}, artifacts {location}); Ctrl-C stops it", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)  # returns on Ctrl-C
    except OSError as err:  # e.g. the port is taken
        raise UsageError(f"--port {port}: cannot listen on {host} ({err.strerror or err})") from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: how a server is meant to end, not an interruption to rerun
        pass
    print("optuna-dashboard stopped", flush=True)


def _location(storage, storage_url: str) -> str:
    """The artifact location the storage's studies recorded (the first one, where they differ)."""
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        if ArtifactLocation.of_study(study) is not None:
            return artifacts.location_of(study, storage_url)
    return str(st.default_artifact_dir(storage_url))


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "localhost"  # listens everywhere; this machine reaches it as localhost
    return f"[{host}]" if ":" in host else host
