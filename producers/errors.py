"""Errors raised by the Kafka edge (see the tree in ``towerstream.errors``)."""

from __future__ import annotations

from towerstream.errors import TowerstreamError


class DeliveryError(TowerstreamError):
    """The broker did not acknowledge records, or could not be reached at all.

    ``bootstrap`` is the address that was tried, so the CLI can say where it failed.
    """

    def __init__(self, message: str, *, bootstrap: str | None = None) -> None:
        super().__init__(message)
        self.bootstrap = bootstrap


class BrokerUnavailable(DeliveryError):
    """No broker answered within the bound (``max_block_ms``): nothing was sent."""
