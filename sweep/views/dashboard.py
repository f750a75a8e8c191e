"""`python -m sweep dashboard`: optuna-dashboard on the study's storage, with its artifacts."""

from __future__ import annotations

import signal
import socket
import threading
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
import optuna_dashboard

from sweep.core import artifacts
from sweep.core import study as st
from sweep.core.errors import UsageError
from sweep.core.records import ArtifactLocation


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until Ctrl-C or SIGTERM, which end it normally. Prints the URL first, so a person (or a
    test) knows where to look; ``port`` 0 takes any free port, which the URL then names."""
    st.check_storage_url(storage_url)
    st.require_existing_sqlite(storage_url)  # optuna-dashboard would create an empty database and show nothing
    storage = st.make_storage(storage_url, heartbeat=False)
    location = _location(storage, storage_url)
    # The dashboard can upload artifacts too: open_store creates a missing folder, which keeps that working.
    store = artifacts.open_store(location)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    try:
        server = make_server(host, port, app, server_class=_server_class(host), handler_class=_Handler)
    except OSError as err:  # e.g. the port is taken
        raise UsageError(f"--port {port}: cannot listen on {host} ({err.strerror or err})") from None
    print(f"optuna-dashboard: http://{_url_host(host)}:{server.server_port}/dashboard  "
          f"(storage {st.display_url(storage_url)}, artifacts {location}); Ctrl-C stops it", flush=True)
    with _stopped_by_signals(server):
        try:
            server.serve_forever()
        finally:
            server.server_close()
    print("optuna-dashboard stopped", flush=True)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, as optuna-dashboard's own server sets it up: no reverse DNS look-up of
    each client; and a client that stops sending is dropped after ``timeout`` s, so that it
    cannot hold the (one-request-at-a-time) server past a stop signal."""

    timeout = 60

    def address_string(self) -> str:
        return self.client_address[0]


def _server_class(host: str) -> type[WSGIServer]:
    if ":" not in host:
        return WSGIServer

    class WSGIServer6(WSGIServer):
        address_family = socket.AF_INET6

    return WSGIServer6


@contextmanager
def _stopped_by_signals(server: WSGIServer):
    """Ctrl-C and SIGTERM stop ``server`` once the request in hand is answered.

    Raising KeyboardInterrupt in the handler, as Python does by default, is not enough: wsgiref
    catches it where it arrives while a response is written (as a failed request) and serves on.
    The handler asks the serving loop to stop instead, from another thread (``shutdown`` waits
    for the loop, which runs in this one); the loop checks between requests.
    """
    def on_signal(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
