"""The HTTP example of the launch guide (``docs/examples/serve.py``) serves requests and stops cleanly.

It is started as users start it, as a script (so its workers start with ``spawn``, the default), on
127.0.0.1 and a free port; two requests come back as a GIF and as a tensor, a bad one as 400; SIGINT
stops the server and its workers (checked by PID).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from test_launch import assert_gone

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "serve.py"


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


def _post(url: str, payload: dict) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url + "/generate", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.mark.ranks
@pytest.mark.timeout(300)
def test_the_http_example_serves_two_requests_and_stops_with_its_workers(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        server = subprocess.Popen([sys.executable, str(EXAMPLE), "--port", "0", "--device", "cpu"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    try:
        line = _first_line(server, timeout=240)
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert found, f"no address in {line!r}; stderr:\n{(tmp_path / 'stderr.txt').read_text()[-3000:]}"
        url = found.group(0)
        with urllib.request.urlopen(url + "/", timeout=30) as response:
            pids = json.load(response)["workers"]
        assert len(pids) == 2

        status, kind, body = _post(url, {"seed": 1, "num_inference_steps": 2})
        assert (status, kind) == (200, "image/gif") and body.startswith(b"GIF8"), (status, body[:200])
        status, kind, body = _post(url, {"seed": 1, "num_inference_steps": 2, "format": "pt"})
        assert (status, kind) == (200, "application/octet-stream"), (status, body[:200])
        frames = torch.load(io.BytesIO(body))
        assert frames.shape == (9, 3, 32, 32) and 0 <= frames.min() <= frames.max() <= 1
        status, _, body = _post(url, {"seed": "one"})
        assert status == 400 and b"seed" in body

        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        assert_gone(pids)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
