"""The mail API client `emails.*` jobs send with."""

from __future__ import annotations

import httpx

from examples.app.settings import get_example_settings


class MailUnavailable(Exception):
    """The provider answered 5xx or not at all: worth another attempt later."""


async def send_email(to: str, subject: str, text: str, idempotency_key: str) -> str:
    """Send one message and return the provider's message id.

    The idempotency key makes a repeat safe: if this step's result was lost (a crash after
    the provider accepted the message), the next attempt gets the same message back
    instead of sending a second email.
    """
    async with httpx.AsyncClient(base_url=get_example_settings().mail_api, timeout=10) as client:
        try:
            response = await client.post(
                "/messages",
                json={"to": to, "subject": subject, "text": text},
                headers={"Idempotency-Key": idempotency_key},
            )
        except httpx.TransportError as exc:
            raise MailUnavailable(f"mail API unreachable: {exc}") from exc
    if response.status_code >= 500:
        raise MailUnavailable(f"mail API answered {response.status_code}")
    response.raise_for_status()
    return str(response.json()["id"])
