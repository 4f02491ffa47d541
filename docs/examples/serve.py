"""A thin HTTP service on top of ``xcfg.launch``: one process, two workers, the standard library only.

    python docs/examples/serve.py --port 8000          # 2 GPUs when present, else 2 gloo CPU workers
    curl -s http://127.0.0.1:8000/
    curl -s -X POST http://127.0.0.1:8000/generate -d '{"seed": 1, "guidance_scale": 6.0}' -o video.gif

It serves the tiny CogVideoX example (random weights, nothing downloaded). Prompt embeddings do not travel
well as JSON, so a request carries only ``seed``, ``guidance_scale``, ``num_inference_steps`` and ``format``,
and the example's own embeddings are used. For a real model, load it in ``make_pipe`` with
``from_pretrained`` and pass a ``"prompt"`` string through instead.

Endpoints, on 127.0.0.1 only (put a real web server in front of it to serve others):

- ``GET /``: ``{"workers": [pid, ...], "devices": [...]}``;
- ``POST /generate``: JSON in; out, ``"format": "gif"`` (the default) an animated GIF, or ``"pt"`` the frames as
  ``torch.save`` of a float tensor ``[frames, 3, height, width]`` in ``[0, 1]``.

``HTTPServer`` answers one request at a time (and the proxy runs one call at a time anyway). A request with
bad JSON gets 400, a call that fails in a worker 500 with the worker's error; when a worker dies the pool is
gone, so the request gets 503 and the server stops (let a supervisor restart it). Ctrl-C or SIGTERM stops the
server and its workers.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import torch

import xcfg

LIMITS = {"num_inference_steps": (1, 50), "guidance_scale": (0.0, 20.0), "seed": (0, 2**63 - 1)}


def make_pipe() -> Any:
    """Runs in each worker: build the pipeline (here the tiny example; ``from_pretrained(...).to(device)`` for a
    real one, with ``device = xcfg.init_distributed()``)."""
    return xcfg.build_example("cogvideox", size="tiny").pipe


def arguments(request: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The pipeline's arguments for one request; ValueError for anything unexpected."""
    unknown = set(request) - {*LIMITS, "format"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; expected {sorted({*LIMITS, 'format'})}")
    out_format = request.get("format", "gif")
    if out_format not in ("gif", "pt"):
        raise ValueError(f"format must be 'gif' or 'pt', got {out_format!r}")
    kwargs = dict(defaults)
    values = {"seed": 0, "guidance_scale": kwargs["guidance_scale"], "num_inference_steps": kwargs["num_inference_steps"]}
    for name, (low, high) in LIMITS.items():
        value = request.get(name, values[name])
        kind = float if isinstance(low, float) else int
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
        values[name] = kind(value)
    kwargs.update(guidance_scale=values["guidance_scale"], num_inference_steps=values["num_inference_steps"],
                  generator=torch.Generator().manual_seed(values["seed"]), output_type="pt")
    return kwargs, out_format


def encode(frames: torch.Tensor, out_format: str) -> tuple[bytes, str]:
    """``frames``: ``[frames, 3, H, W]`` in ``[0, 1]``, as the pipeline returns with ``output_type="pt"``."""
    buffer = io.BytesIO()
    if out_format == "pt":
        torch.save(frames.contiguous(), buffer)
        return buffer.getvalue(), "application/octet-stream"
    from PIL import Image

    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=125, loop=0)
    return buffer.getvalue(), "image/gif"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path != "/":
            self.send_error(404)
            return
        pipe = self.server.pipe
        self.reply(200, {"workers": pipe.pids, "devices": [str(d) for d in pipe.devices]})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/generate":
            self.send_error(404)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
            kwargs, out_format = arguments(request, self.server.defaults)
        except ValueError as err:
            self.reply(400, {"error": str(err)})
            return
        try:
            frames = self.server.pipe(**kwargs).frames[0]
        except xcfg.WorkerError as err:  # the pool is still usable
            self.reply(500, {"error": str(err).splitlines()[0], "rank": err.rank})
            return
        except xcfg.LaunchError as err:  # a worker died or stopped answering: the pool is closed
            self.reply(503, {"error": str(err).splitlines()[0]})
            self.server.stopping = True
            return
        body, content_type = encode(frames, out_format)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(HTTPServer):
    def __init__(self, port: int, pipe: xcfg.Launched, defaults: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.pipe = pipe
        self.defaults = defaults
        self.stopping = False

    def service_actions(self) -> None:
        if self.stopping:
            raise KeyboardInterrupt  # leave serve_forever; the with block closes the pool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a call may stay silent")
    args = parser.parse_args(argv)

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    defaults = dict(xcfg.build_example("cogvideox", size="tiny").kwargs)  # the demo's prompt embeddings
    with xcfg.launch(make_pipe, nproc=2, device=args.device, timeout=args.timeout) as pipe:
        pipe.set_progress_bar_config(disable=True)  # a service has no one to show it to
        server = Server(args.port, pipe, defaults)
        print(f"serving on http://127.0.0.1:{server.server_port} (workers {pipe.pids})", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
