"""The example's database: one SQLite file shared by the app, the workers and cron.

Every write a job makes is an upsert keyed by something the job already knows (a user
id, an episode URL, a catalog id), so a step that runs twice after a crash leaves the same
rows behind: step side effects are at-least-once, and this is how a job makes them safe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from examples.app.settings import get_example_settings

SCHEMA = """
create table if not exists users (
    id integer primary key autoincrement,
    email text not null unique,
    name text not null,
    welcome_message_id text,
    followup_message_id text
);
create table if not exists episodes (
    url text primary key,
    title text not null,
    series text,
    episode_number integer,
    duration real,
    file text not null,
    size integer not null,
    sha256 text not null,
    released_at text,
    resolved_at text not null
);
create table if not exists catalog (
    id text primary key,
    title text not null,
    premiere_at text not null,
    synced_at text not null
);
create table if not exists syncs (
    job_id text primary key,
    pages integer not null,
    episodes integer not null,
    finished_at text not null
);
"""


class User(BaseModel):
    id: int
    email: str
    name: str
    welcome_message_id: str | None = None
    followup_message_id: str | None = None


class StoredEpisode(BaseModel):
    url: str
    title: str
    series: str | None
    episode_number: int | None
    duration: float | None
    file: str
    size: int
    sha256: str
    released_at: datetime | None
    resolved_at: datetime


@contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """A connection in a transaction; WAL lets the app read while workers write."""
    data_dir = get_example_settings().data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(data_dir / "example.sqlite3", timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("pragma journal_mode=wal")
        connection.executescript(SCHEMA)
        with connection:
            yield connection
    finally:
        connection.close()


def now() -> str:
    return datetime.now(UTC).isoformat()


def create_user(email: str, name: str) -> User:
    """Sign a user up, or return the existing user with that email (a repeated form post)."""
    with connect() as db:
        db.execute("insert or ignore into users (email, name) values (?, ?)", (email, name))
        row = db.execute("select * from users where email = ?", (email,)).fetchone()
    return User(**dict(row))


def load_user(user_id: int) -> User:
    with connect() as db:
        row = db.execute("select * from users where id = ?", (user_id,)).fetchone()
    if row is None:
        raise LookupError(f"no user {user_id}")
    return User(**dict(row))


def record_message(user_id: int, kind: str, message_id: str) -> None:
    column = {"welcome": "welcome_message_id", "followup": "followup_message_id"}[kind]
    with connect() as db:
        db.execute(f"update users set {column} = ? where id = ?", (message_id, user_id))


def save_episode(episode: StoredEpisode) -> StoredEpisode:
    values = episode.model_dump(mode="json")
    with connect() as db:
        db.execute(
            "insert or replace into episodes values (:url, :title, :series, :episode_number,"
            " :duration, :file, :size, :sha256, :released_at, :resolved_at)",
            values,
        )
    return episode


def list_episodes() -> list[StoredEpisode]:
    with connect() as db:
        rows = db.execute("select * from episodes order by resolved_at").fetchall()
    return [StoredEpisode(**dict(row)) for row in rows]


def upsert_catalog(items: list[dict[str, Any]]) -> int:
    with connect() as db:
        db.executemany(
            "insert or replace into catalog values (:id, :title, :premiere_at, :synced_at)",
            [{**item, "synced_at": now()} for item in items],
        )
    return len(items)


def catalog_size() -> int:
    with connect() as db:
        return int(db.execute("select count(*) from catalog").fetchone()[0])


def record_sync(job_id: str, pages: int, episodes: int) -> None:
    with connect() as db:
        db.execute(
            "insert or replace into syncs values (?, ?, ?, ?)", (job_id, pages, episodes, now())
        )


def list_syncs() -> list[dict[str, Any]]:
    with connect() as db:
        return [dict(row) for row in db.execute("select * from syncs order by finished_at")]
