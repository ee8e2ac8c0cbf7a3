"""Stand-ins for the services the example app depends on, on loopback, with no internet.

- `MediaSite`: a podcast host. Episode pages carry schema.org JSON-LD (as real hosts do),
  which yt-dlp's generic extractor reads; the audio is a WAV file generated here. An
  episode can premiere in the future: its page is up, its audio 404s until then. A paged
  catalog API feeds the nightly sync.
- `MailServer`: a transactional-mail HTTP API that fails every `fail_every`-th request with
  503, as a busy provider does, and de-duplicates on the `Idempotency-Key` header.

Run both with `python -m examples.app.fakes` (ports 8701 and 8702, the example's defaults).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import struct
import threading
import time
import uuid
import wave
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

SERIES = "The Loopback Show"


def make_wav(seconds: float = 1.0, frequency: float = 440.0, rate: int = 8000) -> bytes:
    """A mono 16-bit sine tone: a real, playable media file made without any encoder."""
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * frequency * i / rate)))
        for i in range(int(seconds * rate))
    )
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buffer.getvalue()


@dataclass
class FakeEpisode:
    id: str
    number: int
    title: str
    premiere_at: datetime
    audio: bytes

    @property
    def released(self) -> bool:
        return datetime.now(UTC) >= self.premiere_at


class _Server:
    """A threading HTTP server on loopback, started and stopped in the background."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes | str | Any, content_type: str = "") -> None:
        if not isinstance(body, bytes | str):
            body, content_type = json.dumps(body), "application/json"
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type or "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def json_body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")


class MediaSite(_Server):
    """A podcast host with `episodes` released episodes already published."""

    def __init__(self, port: int = 0, episodes: int = 25, page_delay: float = 0.0) -> None:
        super().__init__(_MediaHandler, port)
        self.page_delay = page_delay
        self.lock = threading.Lock()
        self.episodes: dict[str, FakeEpisode] = {}
        launch = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        for number in range(1, episodes + 1):
            self.add(f"Episode {number}", launch + timedelta(weeks=number - 1))

    def add(self, title: str, premiere_at: datetime) -> FakeEpisode:
        with self.lock:
            number = len(self.episodes) + 1
            episode = FakeEpisode(
                id=f"ep{number}",
                number=number,
                title=title,
                premiere_at=premiere_at,
                audio=make_wav(frequency=220.0 + 20 * number),
            )
            self.episodes[episode.id] = episode
        return episode

    def page_url(self, episode: FakeEpisode) -> str:
        return f"{self.url}/episodes/{episode.id}"

    def json_ld(self, episode: FakeEpisode) -> list[dict[str, Any]]:
        return [
            {
                "@context": "https://schema.org",
                "@type": "PodcastEpisode",
                "name": episode.title,
                "episodeNumber": episode.number,
                "partOfSeries": {"@type": "CreativeWorkSeries", "name": SERIES},
            },
            {
                "@context": "https://schema.org",
                "@type": "AudioObject",
                "contentUrl": f"{self.url}/media/{episode.id}.wav",
                "encodingFormat": "audio/wav",
                "duration": "PT1S",
                "uploadDate": episode.premiere_at.isoformat(),
                "contentSize": str(len(episode.audio)),
            },
        ]


class _MediaHandler(_Handler):
    @property
    def site(self) -> MediaSite:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if match := re.fullmatch(r"/episodes/(\w+)", url.path):
            self._page(match.group(1))
        elif match := re.fullmatch(r"/media/(\w+)\.wav", url.path):
            self._audio(match.group(1))
        elif url.path == "/api/catalog":
            self._catalog(parse_qs(url.query))
        else:
            self.reply(404, "not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.path != "/admin/episodes":
            self.reply(404, "not found")
            return
        body = self.json_body()
        premiere = datetime.now(UTC) + timedelta(seconds=float(body.get("premiere_in", 0)))
        # Whole seconds, as pages state times and yt-dlp reads them: a premiere rounded
        # down would make the job wake up before the audio is online.
        if premiere.microsecond:
            premiere = premiere.replace(microsecond=0) + timedelta(seconds=1)
        episode = self.site.add(body["title"], premiere)
        self.reply(201, {"id": episode.id, "url": self.site.page_url(episode)})

    def _page(self, episode_id: str) -> None:
        episode = self.site.episodes.get(episode_id)
        if episode is None:
            self.reply(404, "no such episode")
            return
        ld = json.dumps(self.site.json_ld(episode))
        html = (
            f"<html><head><title>{episode.title} | {SERIES}</title>"
            f'<meta property="og:title" content="{episode.title}">'
            f'<script type="application/ld+json">{ld}</script></head>'
            f"<body><h1>{episode.title}</h1></body></html>"
        )
        self.reply(200, html, "text/html; charset=utf-8")

    def _audio(self, episode_id: str) -> None:
        episode = self.site.episodes.get(episode_id)
        if episode is None or not episode.released:
            self.reply(404, "not released yet" if episode else "no such episode")
            return
        self.reply(200, episode.audio, "audio/wav")

    def _catalog(self, query: dict[str, list[str]]) -> None:
        page, per_page = int(query.get("page", ["1"])[0]), int(query.get("per_page", ["10"])[0])
        time.sleep(self.site.page_delay)  # a slow upstream: what makes the sync long
        episodes = sorted(self.site.episodes.values(), key=lambda e: e.number)
        chunk = episodes[(page - 1) * per_page : page * per_page]
        pages = max(1, math.ceil(len(episodes) / per_page))
        items = [
            {"id": e.id, "title": e.title, "premiere_at": e.premiere_at.isoformat()} for e in chunk
        ]
        self.reply(200, {"page": page, "pages": pages, "items": items})


class MailServer(_Server):
    """A mail API: `POST /messages` delivers once per `Idempotency-Key`. One request in
    every `fail_every` (the first, then every `fail_every`-th after it) gets a 503 instead;
    0 turns the flakiness off."""

    def __init__(self, port: int = 0, fail_every: int = 2) -> None:
        super().__init__(_MailHandler, port)
        self.fail_every = fail_every
        self.lock = threading.Lock()
        self.requests = 0
        self.failures = 0
        self.delivered: dict[str, dict[str, Any]] = {}

    def messages_to(self, address: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.delivered.values() if m["to"] == address]


class _MailHandler(_Handler):
    def do_GET(self) -> None:
        mail: MailServer = self.server.owner  # type: ignore[attr-defined]
        with mail.lock:
            body = {"requests": mail.requests, "failures": mail.failures}
            body["messages"] = list(mail.delivered.values())
        self.reply(200, body)

    def do_POST(self) -> None:
        mail: MailServer = self.server.owner  # type: ignore[attr-defined]
        key = self.headers.get("Idempotency-Key")
        message = self.json_body()
        if self.path != "/messages" or not key or not {"to", "subject", "text"} <= set(message):
            self.reply(400, {"error": "POST /messages with to, subject, text and Idempotency-Key"})
            return
        with mail.lock:
            mail.requests += 1
            if mail.fail_every and (mail.requests - 1) % mail.fail_every == 0:
                mail.failures += 1
                status, body = 503, {"error": "try again later"}
            else:
                if key not in mail.delivered:
                    mail.delivered[key] = {**message, "id": uuid.uuid4().hex, "key": key}
                status, body = 202, mail.delivered[key]
        self.reply(status, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media-port", type=int, default=8701)
    parser.add_argument("--mail-port", type=int, default=8702)
    parser.add_argument("--fail-every", type=int, default=2)
    parser.add_argument("--page-delay", type=float, default=0.5)
    args = parser.parse_args()
    site = MediaSite(args.media_port, page_delay=args.page_delay).start()
    mail = MailServer(args.mail_port, fail_every=args.fail_every).start()
    print(f"media site {site.url}  mail API {mail.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        site.stop()
        mail.stop()


if __name__ == "__main__":
    main()
