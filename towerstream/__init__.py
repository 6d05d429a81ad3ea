"""towerstream: a streaming two-tower recommender on Kafka.

This package holds what is shared by the core and the edges: settings, event
schemas, the recording format, errors and logging. Importing it pulls in
neither faust nor kafka.
"""

__version__ = "0.1.0"
