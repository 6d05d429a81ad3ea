"""The Faust edge: agents that consume Kafka, and the web views that serve recommendations.

``faust -A streams.app worker -l info`` runs it; ``towerstream worker`` is an alias.
"""
