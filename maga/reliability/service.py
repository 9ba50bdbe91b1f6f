"""The upload service under load and abuse, on loopback. The analyzer opens each upload with
`open_slide` and answers its dimensions and the sha256 of the bytes received, so every answer can be
checked against the file sent; the network and queue are the real service's (create_app, uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from maga_core.config import file_sha256
from maga_core.slides import open_slide
from maga.telepath.server import ServeConfig, ServerThread, create_app


class InfoAnalyzer:
    """Reads the upload as a slide; remembers where uploads were stored and how many ran at once."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.running = self.max_running = 0
        self.lock = threading.Lock()

    def analyze(self, path: Path, magnification: float) -> dict:
        with self.lock:
            self.paths.append(Path(path))
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            running = self.running
        try:
            with open_slide(path, mpp=0.25) as r:
                r.read_region((0, 0), r.level_count - 1, (64, 64))
                dims = list(r.dimensions)
            return {"dimensions": dims, "sha256": file_sha256(path), "magnification": magnification,
                    "analyses_running": running}
        finally:
            with self.lock:
                self.running -= 1


def raw_request(url: str, head: bytes, body: bytes = b"", stall_s: float = 0.0, close_early: bool = False,
                timeout_s: float = 30.0) -> tuple[int, float]:
    """Send bytes the way a broken or hostile client would: (status, seconds until the answer); status 0
    when the connection closed without one (or we closed it)."""
    host, port = url.split("//", 1)[1].split(":")
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(head + body)
        if close_early:
            return 0, time.perf_counter() - t0
        if stall_s:
            time.sleep(stall_s)
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            return 0, time.perf_counter() - t0
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - t0


def request_head(token: str, length: str | None, filename: str = "slide.svs", extra: str = "") -> bytes:
    lines = ["POST /v1/diagnose?magnification=5 HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
             f"X-Filename: {filename}", "Content-Type: application/octet-stream"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines + ([extra] if extra else [])) + "\r\n\r\n").encode()


@dataclass
class LoadStats:
    clients: int
    uploads_per_client: int
    answered_correctly: int = 0
    wrong: list[str] = field(default_factory=list)
    seconds: float = 0.0
    max_concurrent_analyses: int = 0
    files_left: int = 0


def load(url: str, token: str, slide: Path, clients: int, uploads: int, upload_dir: Path) -> LoadStats:
    """`clients` threads each upload `slide` `uploads` times; each answer must carry the slide's sha256
    and dimensions."""
    import httpx

    want_sha = file_sha256(slide)
    with open_slide(slide, mpp=0.25) as r:
        want_dims = list(r.dimensions)
    body = slide.read_bytes()
    stats = LoadStats(clients, uploads)

    running: list[int] = []

    def client(k: int) -> list[str]:
        wrong = []
        with httpx.Client(timeout=600) as c:
            for i in range(uploads):
                resp = c.post(f"{url}/v1/diagnose", content=body,
                              headers={"Authorization": f"Bearer {token}", "X-Filename": slide.name})
                got = resp.json() if resp.status_code == 200 else {}
                running.append(int(got.get("analyses_running", 0)))
                if got.get("sha256") != want_sha or got.get("dimensions") != want_dims or got.get("bytes") != len(body):
                    wrong.append(f"client {k} upload {i}: {resp.status_code} {resp.text[:200]}")
        return wrong

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for wrong in pool.map(client, range(clients)):
            stats.wrong += wrong
    stats.seconds = round(time.perf_counter() - t0, 2)
    stats.answered_correctly = clients * uploads - len(stats.wrong)
    stats.max_concurrent_analyses = max(running, default=0)
    stats.files_left = sum(1 for _ in upload_dir.iterdir())
    return stats


def serve_main(upload_dir: str, token: str, body_timeout_s: float) -> None:
    """The service in its own process (so its memory is its own): prints its URL, serves until killed."""
    app = create_app(InfoAnalyzer(), ServeConfig(token=token, max_upload_bytes=64 * 1024**2, upload_dir=upload_dir,
                                                 body_timeout_s=body_timeout_s))
    with ServerThread(app) as url:
        print(url, flush=True)
        threading.Event().wait()
