"""The web server's HTTP API without a browser: token, upload limits and resume, paths the
client cannot choose, jobs through the real job service, cancel."""
from __future__ import annotations

import threading
import time

import pytest

from .conftest import TOKEN


def upload(stack, name: str, data: bytes) -> str:
    status, info = stack.request("POST", "/api/uploads", {"name": name, "size": len(data)})
    assert status == 200, info
    return info["id"]


def finished(stack, job: dict, seconds: float) -> dict:
    """The job's status once it has finished (or the time is up)."""
    deadline = time.monotonic() + seconds
    while not job["finished"] and time.monotonic() < deadline:
        time.sleep(0.5)
        job = stack.request("GET", f"/api/jobs/{job['id']}")[1]
    return job


def test_token_is_asked_for_and_checked(stack):
    status, config = stack.request("GET", "/api/config", token=None)
    assert status == 200 and config["token_required"]
    assert stack.request("GET", "/api/jobs", token=None)[0] == 401
    assert stack.request("GET", "/api/jobs", token="wrong")[0] == 401
    assert stack.request("GET", "/api/jobs")[0] == 200


def test_upload_resumes_at_the_servers_offset(stack):
    data = bytes(range(256)) * 40
    upload_id = upload(stack, "tape.mp4", data)
    assert stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data[:4000])[0] == 200
    # A chunk sent again (the reply was lost) is refused with where the upload stands.
    status, reply = stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data[:4000])
    assert status == 409 and reply["received"] == 4000
    status, info = stack.request("GET", f"/api/uploads/{upload_id}")
    assert info["received"] == 4000 and not info["complete"]
    status, info = stack.request("PUT", f"/api/uploads/{upload_id}?offset=4000", raw=data[4000:])
    assert status == 200 and info["complete"]
    files = list((stack.uploads / upload_id).glob("*.mp4"))
    assert len(files) == 1 and files[0].read_bytes() == data


def test_no_client_path_is_trusted(stack):
    upload_id = upload(stack, "../../../etc/evil name.mp4", b"x")
    assert [p.name for p in (stack.uploads / upload_id).iterdir() if p.suffix == ".mp4"] \
        == ["evil_name.mp4"]
    assert stack.request("GET", "/api/uploads/..%2F..%2Fetc")[0] == 404
    assert stack.request("PUT", "/api/uploads/0123456789abcdef0123456789abcdef?offset=0",
                         raw=b"x")[0] == 404
    status, reply = stack.request("POST", "/api/jobs", {"upload": "../x", "tasks": ["analog"]})
    assert status == 404, reply
    assert stack.request("GET", "/files/not-a-ticket/x.mp4", token=None)[0] == 404


def test_size_limits(stack):
    status, reply = stack.request("POST", "/api/uploads", {"name": "big.mp4", "size": 10 ** 9})
    assert status == 413 and "at most" in reply["error"]
    upload_id = upload(stack, "small.mp4", b"abc")
    assert stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=b"abcdef")[0] == 413


def test_bad_requests_get_plain_errors(stack, tape):
    upload_id = upload(stack, "tape.mp4", tape.read_bytes())
    assert stack.request("POST", f"/api/uploads/{upload_id}/inspect", {"tasks": ["analog"]})[0] == 409
    status, reply = stack.request("POST", "/api/jobs", {"upload": upload_id, "tasks": ["nonsense"]})
    assert status in (400, 409) and reply["error"]


def test_cancel_a_running_job(stack, tape):
    data = tape.read_bytes()
    upload_id = upload(stack, tape.name, data)
    status, info = stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data)
    assert status == 200 and info["complete"], info
    status, job = stack.request("POST", "/api/jobs", {"upload": upload_id, "tasks": ["analog", "denoise"]})
    assert status == 200, job
    assert job["input_name"] == "wedding_tape.mp4"
    status, job = stack.request("POST", f"/api/jobs/{job['id']}/cancel")
    assert status == 200, job
    job = finished(stack, job, 60)
    assert job["state"] == "CANCELLED", job
    status, reply = stack.request("POST", f"/api/jobs/{job['id']}/download")
    assert status == 409, reply
    listed = stack.request("GET", "/api/jobs")[1]["jobs"]
    assert job["id"] in [j["id"] for j in listed]


@pytest.mark.parametrize("path", ["/", "/app.js", "/style.css"])
def test_page_files(stack, path):
    import urllib.parse
    import urllib.request
    with urllib.request.urlopen(stack.url + path, timeout=10) as reply:
        assert reply.status == 200
        assert "default-src 'self'" in reply.headers["Content-Security-Policy"]


def test_preview_outside_the_video_is_a_plain_error(stack, tape):
    data = tape.read_bytes()
    upload_id = upload(stack, tape.name, data)
    stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data)
    status, reply = stack.request("POST", f"/api/uploads/{upload_id}/preview",
                                  {"at": 100, "seconds": 1, "tasks": ["analog"]})
    assert status == 400 and "long" in reply["error"], reply
    assert not list((stack.uploads / upload_id).glob("preview-*"))


def test_uploads_can_be_sent_to_a_job_service_elsewhere(stack, tape, tmp_path):
    """--send-uploads: the job service gets the bytes, not a path it may not see."""
    from orchestrator.web import make_server
    from .conftest import Stack, free_port
    port = free_port()
    server = make_server(f"127.0.0.1:{port}", stack.jobs, TOKEN, tmp_path / "elsewhere",
                         send_files=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        other = Stack(f"http://127.0.0.1:{port}", stack.jobs, tmp_path / "elsewhere" / "uploads", TOKEN)
        data = tape.read_bytes()
        upload_id = upload(other, "far away.mp4", data)
        other.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data)
        status, job = other.request("POST", "/api/jobs", {"upload": upload_id, "tasks": ["analog"]})
        assert status == 200 and job["input_name"] == "far_away.mp4", job
        assert other.request("POST", f"/api/jobs/{job['id']}/cancel")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_with_odd_characters_is_refused_not_crashed(stack):
    status, reply = stack.request("GET", "/api/jobs", raw=None, token="wrong-\u00e9".encode().decode("latin-1"))
    assert status == 401, reply


def sent(stack, name: str, data: bytes) -> str:
    upload_id = upload(stack, name, data)
    status, info = stack.request("PUT", f"/api/uploads/{upload_id}?offset=0", raw=data)
    assert status == 200 and info["complete"], info
    return upload_id


def test_uploaded_reference_images_colour_the_grey_scene(stack, tape, tmp_path):
    """Colour photos uploaded beside the video reach the colorizer (they come before the
    tape's own colour shots): a red picture turns the grey scene red."""
    import cv2
    import numpy as np
    red = np.zeros((48, 64, 3), np.uint8)
    red[..., 2] = 230
    red[..., :2] = np.linspace(0, 150, 64, dtype=np.uint8)[None, :, None]
    reference = sent(stack, "red.png", cv2.imencode(".png", red)[1].tobytes())
    video = sent(stack, tape.name, tape.read_bytes())
    not_image = sent(stack, "notes.png", b"not an image at all")
    status, reply = stack.request("POST", "/api/jobs", {"upload": video, "tasks": ["colorize"],
                                                        "references": [not_image]})
    assert status == 400 and "not an image" in reply["error"]
    status, reply = stack.request("POST", "/api/jobs", {"upload": video, "tasks": ["analog"],
                                                        "references": [reference]})
    assert status == 400 and "colour" in reply["error"]
    status, job = stack.request("POST", "/api/jobs", {"upload": video, "tasks": ["colorize"],
                                                      "references": [reference]})
    assert status == 200, job
    job = finished(stack, job, 300)
    assert job["state"] == "SUCCEEDED", job
    status, result = stack.request("POST", f"/api/jobs/{job['id']}/download")
    assert status == 200, result
    import urllib.parse
    import urllib.request
    path = tmp_path / "result.mp4"
    with urllib.request.urlopen(stack.url + urllib.parse.quote(result["url"]), timeout=60) as reply:
        path.write_bytes(reply.read())
    from tests.helpers import read_frames
    frames = read_frames(path)
    middle = frames[int(len(frames) * 0.48)]
    cr = cv2.cvtColor(middle, cv2.COLOR_RGB2YCrCb)[..., 1].astype(float) - 128
    assert cr.mean() > 4.0, cr.mean()


def test_the_page_chooses_whether_date_stamps_are_removed_or_kept(stack, tape):
    """The page's choice reaches the outpaint stage as outpaint.overlays; anything else
    than remove or keep is refused before a job starts."""
    from orchestrator.web.server import _specs
    video = sent(stack, tape.name, tape.read_bytes())
    status, reply = stack.request("POST", "/api/jobs", {"upload": video, "tasks": ["outpaint"],
                                                        "overlays": "erase"})
    assert status == 400 and "overlays" in reply["error"]
    kept = {s.task: s.params for s in _specs(["analog", "outpaint"], {"overlays": "keep"})}
    assert kept["outpaint"] == {"overlays": "keep"}
    assert {s.task: s.params for s in _specs(["outpaint"])}["outpaint"] == {"overlays": "remove"}
