"""Errors raised by the index store.

TowerstreamError
 +-- IndexStoreError: the vector index or a store refused an operation
      +-- DimensionMismatch: a vector's width is not the index's `dim` (carries `expected`, `got`)
      +-- UnknownId: a lookup named ids or rows that are not stored (carries `ids`; also a KeyError)
      +-- CheckpointError: no checkpoint under a root could be read (carries `failures`)

The index raises; the caller (a Faust agent, the CLI) decides whether to skip, dead-letter or stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from towerstream.errors import TowerstreamError

__all__ = ["CheckpointError", "DimensionMismatch", "IndexStoreError", "UnknownId"]


class IndexStoreError(TowerstreamError):
    """Root of the errors raised by `index_store`."""


class DimensionMismatch(IndexStoreError):
    """A vector (or query) does not have the width the index was built with."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected vectors of dimension {expected}, got {got}")
        self.expected = expected
        self.got = got


class UnknownId(IndexStoreError, KeyError):
    """A lookup named ids (or id-map rows) that are not stored.

    Also a `KeyError`, so code that treats the index like a mapping can catch it that way.
    """

    def __init__(self, ids: Sequence[int | str], what: str = "id") -> None:
        shown = list(ids[:10])
        more = f" (+{len(ids) - 10} more)" if len(ids) > 10 else ""
        super().__init__(f"unknown {what}(s): {shown}{more}")
        self.ids = list(ids)

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message; keep it readable.
        return str(self.args[0])


class CheckpointError(IndexStoreError):
    """No checkpoint under a root could be read; `failures` says why each one was rejected."""

    def __init__(self, message: str, failures: Sequence[tuple[Path, str]] = ()) -> None:
        detail = "; ".join(f"{p.name}: {why}" for p, why in failures)
        super().__init__(f"{message}: {detail}" if detail else message)
        self.failures = list(failures)
