"""``VectorIndex.on_centroids`` (a replica's index on its version's lists) against brute force.

Exact flat answers equal a numpy argsort; IVF on given centroids with every list probed equals it
too; the lists stay the ones given however the index grows (the worker's IVF re-trains at 4x
growth, which would make two replicas bucket differently); the answers do not depend on the order
vectors were added in.
"""

from __future__ import annotations

import faiss
import numpy as np

from index_store.vector_index import RETRAIN_GROWTH, VectorIndex


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int, banned: set[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[assignment]
    keep = np.array([i not in banned for i in ids.tolist()])
    xb, ids = xb[keep], ids[keep]
    scores = xq @ xb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def centroids_of(index: VectorIndex) -> np.ndarray:
    ivf = index._ivf
    assert ivf is not None
    q = faiss.downcast_index(ivf.quantizer)
    return q.reconstruct_n(0, q.ntotal)


def test_flat_and_ivf_with_every_list_probed_equal_numpy() -> None:
    rng = np.random.default_rng(0)
    d, n, nlist = 16, 3000, 12
    xb, xq = unit(rng, n, d), unit(rng, 40, d)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    flat = VectorIndex(d, "flat")
    ivf = VectorIndex.on_centroids(xb[:nlist], nprobe=nlist)
    for index in (flat, ivf):
        index.upsert(ids, xb)
        D, I = index.search(xq, 10)
        Dw, Iw = brute(xb, ids, xq, 10)
        np.testing.assert_array_equal(I, Iw)
        np.testing.assert_allclose(D, Dw, atol=1e-5)
        banned = set(Iw[:, :3].ravel().tolist())
        D, I = index.search(xq, 10, exclude=[banned] * len(xq))
        Dw, Iw = brute(xb, ids, xq, 10, banned)
        np.testing.assert_array_equal(I, Iw)
        np.testing.assert_allclose(D, Dw, atol=1e-5)


def test_the_given_lists_stay_however_the_index_grows_and_changes() -> None:
    rng = np.random.default_rng(1)
    d, nlist = 8, 4
    cents = unit(rng, nlist, d)
    index = VectorIndex.on_centroids(cents, nprobe=1)
    n = 50
    index.upsert(np.arange(n), unit(rng, n, d))
    index.upsert(np.arange(n, int(n * RETRAIN_GROWTH * 3)), unit(rng, int(n * RETRAIN_GROWTH * 3) - n, d))
    index.delete(np.arange(10))
    index.retrain()
    assert not index.refit()
    np.testing.assert_array_equal(centroids_of(index), cents)
    assert index.is_trained and index.kind == "ivf"


def test_ivf_answers_do_not_depend_on_the_order_vectors_arrived_in() -> None:
    rng = np.random.default_rng(2)
    d, n, nlist = 16, 2000, 16
    xb, xq = unit(rng, n, d), unit(rng, 30, d)
    ids = np.arange(n, dtype=np.int64)
    a = VectorIndex.on_centroids(xb[:nlist], nprobe=3)
    b = VectorIndex.on_centroids(xb[:nlist], nprobe=3)
    a.upsert(ids, xb)
    perm = rng.permutation(n)
    for s in range(0, n, 97):  # another order, in other batches, with a delete and re-add between
        b.upsert(ids[perm[s : s + 97]], xb[perm[s : s + 97]])
    b.delete(ids[:50])
    b.upsert(ids[:50], xb[:50])
    Da, Ia = a.search(xq, 10)
    Db, Ib = b.search(xq, 10)
    np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_allclose(Da, Db, atol=1e-6)
    # And a partial probe is not the exact answer here (so the test above compares something).
    _, Iw = brute(xb, ids, xq, 10)
    assert (Ia != Iw).any()
