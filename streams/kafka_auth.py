"""Kafka security settings (SASL/TLS) -> Faust credentials and aiokafka kwargs."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from towerstream.settings import Settings

if TYPE_CHECKING:  # faust is imported where it is used: a serving replica (streams.serve) runs without it
    import faust


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return ctx


def faust_credentials(settings: Settings) -> "faust.types.auth.CredentialsT | None":
    import faust

    proto = settings.security_protocol
    if proto == "PLAINTEXT":
        return None
    ctx = ssl_context(settings)
    if proto == "SSL":
        return faust.SSLCredentials(ctx)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        ssl_context=ctx,
        mechanism=settings.sasl_mechanism or "PLAIN",
    )


def aiokafka_kwargs(settings: Settings) -> dict[str, Any]:
    kw: dict[str, Any] = {"security_protocol": settings.security_protocol}
    ctx = ssl_context(settings)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if settings.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kw["sasl_plain_username"] = settings.sasl_username
        kw["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return kw
