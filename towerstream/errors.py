"""The error tree.

TowerstreamError
 +-- InvalidEvent (towerstream.events.codec): a record or request body that fails validation
 +-- IndexStoreError (index_store.errors): the vector index or store refused an operation
 +-- DeliveryError (producers): the broker did not acknowledge records
The core raises; the edges decide: dead-letter, 4xx, or stop.
"""


class TowerstreamError(Exception):
    """Root of every error this project raises on purpose."""
