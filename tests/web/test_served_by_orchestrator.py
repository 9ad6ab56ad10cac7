"""`orchestrator serve --http` serves the web page itself, beside the job API."""
from __future__ import annotations

import urllib.request

from .conftest import TOKEN, free_port, start, stop


def test_the_job_service_serves_the_page(tmp_path):
    jobs_port, web_port = free_port(), free_port()
    service = start(["-m", "orchestrator", "serve", "--listen", f"127.0.0.1:{jobs_port}",
                     "--store", str(tmp_path / "store"), "--token", TOKEN, "--device", "cpu",
                     "--http", f"127.0.0.1:{web_port}"], tmp_path / "serve.log", web_port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=30) as reply:
            page = reply.read().decode()
        assert reply.status == 200 and "<html" in page.lower()
        request = urllib.request.Request(f"http://127.0.0.1:{web_port}/api/jobs",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
    finally:
        stop(service)
