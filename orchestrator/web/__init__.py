"""The web page for the person with the tape: upload, inspect, preview, run, download.

    python -m orchestrator.web --listen 127.0.0.1:8080 --jobs 127.0.0.1:50100 [--token T]
"""
from .server import make_server, serve_http

__all__ = ["make_server", "serve_http"]
