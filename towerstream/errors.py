"""The error tree: every error towerstream raises on purpose, where it lives and what it carries.

TowerstreamError
 +-- InvalidEvent (towerstream.events.codec): a record or request body that fails validation;
 |     ``kind`` (a short category for dead letters and metrics), ``reason`` (for people)
 +-- IndexStoreError (index_store.errors): the vector index or its store refused an operation
 |    +-- DimensionMismatch: a vector or query of the wrong width; ``expected``, ``got``
 |    +-- UnknownId (also a KeyError): ids or id-map rows that are not stored; ``ids``
 |    +-- CheckpointError: no checkpoint under a root could be read; ``failures`` (path, why)
 +-- DeliveryError (producers.errors): the broker did not acknowledge records; ``bootstrap``
 |    +-- BrokerUnavailable: no broker answered within ``max_block_ms``: nothing was sent
 +-- PublishError (streams.publisher): Kafka did not take a published record (chained from its cause)
 +-- DatasetError (towerstream.datasets): not a dataset this reader knows; ``path``, ``reason``
 +-- RecordingError (towerstream.recording): an unreadable recording line; ``line_no``
 +-- BrokerError (towerstream.broker): the embedded broker could not be started
 +-- WorkerError (towerstream.processes): a worker process did not become ready, or died

The core raises; the edges decide: dead-letter with the reason, answer 4xx, or stop. The HTTP
edge's own ``HttpError`` (streams.http_api) is not part of the tree: it is a response, not a
failure, and never leaves the HTTP layer.
"""


class TowerstreamError(Exception):
    """Root of every error this project raises on purpose."""
