"""Settings -> kafka-python keyword arguments.

One place maps the security fields, so the producer, the admin client and the
recorder's consumer all reach a SASL/TLS cluster the same way.
"""

from __future__ import annotations

import functools
from typing import Any

from towerstream.settings import Settings

#: kafka-python 3 warns ("It is blocking the event loop") when one step of its IO thread's loop
#: takes more than 0.1 s of wall clock. That step includes compressing a record batch, and in our
#: processes the IO thread waits for the GIL while the main thread builds and serialises records
#: (replay, produce), so on a loaded machine normal use crosses 0.1 s and prints the warning,
#: which says nothing about the client. A step this long (a real livelock) still warns.
SLOW_STEP_WARN_S = 5.0

_SASL = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS = ("SSL", "SASL_SSL")


def client_config(settings: Settings, *, client_id: str = "towerstream") -> dict[str, Any]:
    """kwargs common to KafkaProducer, KafkaConsumer and KafkaAdminClient.

    SASL fields are passed only for ``SASL_*`` protocols and TLS files only for
    ``SSL``/``SASL_SSL``; a SASL protocol without a mechanism or credentials is a
    configuration error raised here rather than deep inside the client.
    """
    from kafka.net.compat import KafkaNetClient

    protocol = settings.security_protocol
    conf: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap.split(",") if s.strip()],
        "security_protocol": protocol,
        "client_id": client_id,
        "kafka_client": functools.partial(KafkaNetClient, slow_task_threshold_secs=SLOW_STEP_WARN_S),
    }
    if protocol in _SASL:
        if settings.sasl_mechanism is None:
            raise ValueError(f"security_protocol={protocol} needs TOWERSTREAM_SASL_MECHANISM")
        if settings.sasl_username is None or settings.sasl_password is None:
            raise ValueError(
                f"sasl_mechanism={settings.sasl_mechanism} needs TOWERSTREAM_SASL_USERNAME "
                "and TOWERSTREAM_SASL_PASSWORD"
            )
        conf["sasl_mechanism"] = settings.sasl_mechanism
        conf["sasl_plain_username"] = settings.sasl_username
        conf["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if protocol in _TLS:
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(settings, field)
            if value is not None:
                conf[field] = value
    return conf
