"""``towerstream serve``: one serving replica (see ``streams.serve``)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="a serving replica: follows the trainer's published versions and answers (never starts a broker)",
        description="Reads every partition of <prefix>.item-vectors, <prefix>.model and <prefix>.interactions "
                    "(no consumer group), answers GET/POST /recommend, GET /items/<id>, /healthz and /metrics on "
                    "TOWERSTREAM_WEB_HOST:TOWERSTREAM_WEB_PORT, and answers <prefix>.recommend-requests in the "
                    "group <app_id>-replicas. Kafka: TOWERSTREAM_KAFKA_BOOTSTRAP (unset: 127.0.0.1:9092).",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from streams.serve import serve
    from towerstream.logs import configure_logging
    from towerstream.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json, repeat_window_s=settings.log_repeat_window_s)
    return serve(settings)
