"""The Faust edge: agents that consume Kafka, and the web views that serve recommendations.

``faust -A streams.app worker -l info`` runs it; ``towerstream worker`` is an alias.
"""

import os

# numpy's OpenBLAS starts one thread per core at import and spins them for every call: on a
# 2-core worker next to the event loop and the training thread a 2-thread SVD of 1000x64 took
# 8.6 ms instead of 0.9 ms. This package is imported before numpy by `faust -A streams.app`.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
