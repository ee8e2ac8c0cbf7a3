"""The media site's catalog API, read page by page by `sync.nightly`."""

from __future__ import annotations

import httpx

from examples.app import store
from examples.app.settings import get_example_settings


def _get_page(page: int, per_page: int) -> dict:
    response = httpx.get(
        f"{get_example_settings().media_site}/api/catalog",
        params={"page": page, "per_page": per_page},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()


def count_pages(per_page: int) -> int:
    return int(_get_page(1, per_page)["pages"])


def sync_page(page: int, per_page: int) -> int:
    """Copy one page of the catalog into the database; an upsert, so a repeat is harmless."""
    return store.upsert_catalog(_get_page(page, per_page)["items"])
