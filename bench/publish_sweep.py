"""What one published model version costs the trainer: freeze, the sweep's embedding, its publishing.

    .venv/bin/python bench/publish_sweep.py --items 100000            # embedded Tansu on a free port
    .venv/bin/python bench/publish_sweep.py --items 100000 --port 21500

Builds an engine with ``--items`` items (synthetic content) and ``--users`` users with a few
trained batches, then measures, in this process: ``freeze`` (the copy under the engine lock),
reading and embedding every live item with the frozen tower (``read_items`` + ``embed``, in the
publisher's chunks), the encoded bytes per item record and of the model payload; and, against a
real broker, one whole ``Publisher`` version (model parts, sweep, flush, ``VersionComplete``).
Diagnostics for docs/benchmarks.md, not a target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._common import add_run_args, begin, write_json  # noqa: E402
from producers.topics import ensure_topics  # noqa: E402
from streams.health import Health  # noqa: E402
from streams.publisher import SWEEP_CHUNK, Publisher  # noqa: E402
from streams.runtime import engine_config  # noqa: E402
from towerstream.broker import EmbeddedBroker  # noqa: E402
from towerstream.engine import Engine  # noqa: E402
from towerstream.events import Interaction, ItemUpsert, UserProfile  # noqa: E402
from towerstream.published import encode_item_vector, pack_model  # noqa: E402
from towerstream.settings import Settings  # noqa: E402
from towerstream.versions import freeze, live_rows, read_items  # noqa: E402

TS = 1_767_225_600_000


def build(engine: Engine, items: int, users: int, rng: np.random.Generator) -> None:
    words = [f"w{k}" for k in range(5000)]
    for s in range(0, items, 8192):
        batch = [ItemUpsert(item_id=f"i{i}", title=" ".join(rng.choice(words, 6)), categories=[f"g{i % 16}"],
                            creator=f"c{i % 500}", numbers={"price": float(i % 100)}, ts=TS)
                 for i in range(s, min(s + 8192, items))]
        engine.apply_items(batch)
    engine.apply_users([UserProfile(user_id=f"u{u}", features={"segment": f"s{u % 8}"}, ts=TS) for u in range(users)])
    for b in range(20):
        engine.learn([Interaction(event_id=f"e{b}-{k}", user_id=f"u{int(rng.integers(users))}",
                                  item_id=f"i{int(rng.integers(items))}", kind="click", ts=TS + k)
                      for k in range(512)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--port", type=int, default=0, help="embedded broker port (0: a free one)")
    add_run_args(ap)
    args = ap.parse_args()
    env = begin(args.seed)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), kafka_bootstrap="127.0.0.1:1", device="cpu", log_level="warning")
        engine = Engine.open(settings.engine_dir, engine_config(settings))
        t0 = time.perf_counter()
        build(engine, args.items, args.users, rng)
        print(f"built {args.items} items, {args.users} users in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        t0 = time.perf_counter()
        frozen = freeze(engine, 1)
        freeze_s = time.perf_counter() - t0
        payload = pack_model(*frozen.model_payload())
        rows = live_rows(engine)
        read_s = embed_s = 0.0
        nbytes = 0
        for s in range(0, len(rows), SWEEP_CHUNK):
            t0 = time.perf_counter()
            batch = read_items(engine, rows[s:s + SWEEP_CHUNK])
            t1 = time.perf_counter()
            vecs = batch.vectors(frozen)
            t2 = time.perf_counter()
            nbytes += sum(len(encode_item_vector(v)) + len(v.item_id) for v in vecs)
            read_s, embed_s = read_s + t1 - t0, embed_s + t2 - t1
        per_100k = 100_000 / len(rows)
        result = {
            "items": len(rows), "users": args.users, "freeze_s": round(freeze_s, 3),
            "read_s_per_100k": round(read_s * per_100k, 2), "embed_s_per_100k": round(embed_s * per_100k, 2),
            "bytes_per_item_record": round(nbytes / len(rows), 1), "model_payload_bytes": len(payload),
        }
        with EmbeddedBroker(port=args.port or None) as broker:
            pub_settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "topic_prefix": "sweep",
                                                       "app_id": "sweep"})
            ensure_topics(pub_settings, ["item-vectors", "model"])
            pub = Publisher(pub_settings, engine, Health())
            pub._connect()
            t0 = time.perf_counter()
            pub._publish_version()
            result["publish_version_s_per_100k"] = round((time.perf_counter() - t0) * per_100k, 2)
            pub._close(10)
        print(result)
        write_json("publish_sweep", {"env": env, "args": vars(args), "result": result},
                   Path(args.out) if args.out else None)
        engine.close()


if __name__ == "__main__":
    main()
