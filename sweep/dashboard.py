"""`python -m sweep dashboard`: optuna-dashboard on the study's storage, with its artifacts."""

from __future__ import annotations

import optuna
import optuna_dashboard

from sweep import study as st
from sweep.errors import UsageError


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until Ctrl-C. Prints the URL first, so a person (or a test) knows where to look."""
    st.check_storage_url(storage_url)
    db = st.sqlite_path(storage_url)
    if db is not None and not db.exists():
        # optuna-dashboard would create an empty database and show nothing.
        raise UsageError(f"--storage {storage_url!r}: {db} does not exist (run `python -m sweep run` first)")
    artifacts = st.default_artifact_dir(storage_url)
    # The dashboard can upload artifacts too; an empty folder costs nothing and keeps that working.
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"optuna-dashboard: http://{_url_host(host)}:{port}/dashboard  (storage {storage_url}, artifacts {artifacts}); Ctrl-C stops it", flush=True)
    try:
        optuna_dashboard.run_server(
            st.make_storage(storage_url, heartbeat=False),
            host=host,
            port=port,
            artifact_store=optuna.artifacts.FileSystemArtifactStore(str(artifacts)),
        )
    except OSError as err:  # e.g. the port is taken
        raise UsageError(f"--port {port}: cannot listen on {host} ({err.strerror or err})") from None


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "localhost"  # listens everywhere; this machine reaches it as localhost
    return f"[{host}]" if ":" in host else host
