"""Backend selection settings and the secrets they may hold."""

from __future__ import annotations

import json

from dicomcloud.config import load_settings

DSN = "postgresql://archive:pg-secret-1@db.example:5432/dicomcloud"
REDIS_URL = "redis://:redis-secret-2@cache.example:6379/0"


def test_backends_are_chosen_by_environment_variables() -> None:
    settings = load_settings(
        environ={
            "DICOMCLOUD_BACKENDS__INDEX": "postgres",
            "DICOMCLOUD_BACKENDS__CACHE": "redis",
            "DICOMCLOUD_BACKENDS__POSTGRES_DSN": DSN,
            "DICOMCLOUD_BACKENDS__REDIS_URL": REDIS_URL,
        }
    )
    backends = settings.backends
    assert (backends.index, backends.cache, backends.postgres_dsn, backends.redis_url) == (
        "postgres",
        "redis",
        DSN,
        REDIS_URL,
    )


def test_redacted_settings_hold_neither_the_dsn_nor_the_redis_password() -> None:
    settings = load_settings(overrides={"backends": {"postgres_dsn": DSN, "redis_url": REDIS_URL}}, environ={})
    text = json.dumps(settings.redacted())
    assert "pg-secret-1" not in text and "redis-secret-2" not in text
    assert settings.redacted()["backends"]["redis_url"] == "redis://:***@cache.example:6379/0"
