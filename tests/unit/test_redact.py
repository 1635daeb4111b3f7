"""Passwords never reach a log line or an error message: every URL shown goes through
``tidings.redact_url``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tidings import App, ConfigurationError, redact_url
from tidings._backends import load_transport
from tidings._runner import serve

SECRET = "S3cretPW"


@pytest.mark.parametrize(("url", "shown"), [
    ("kafka://alice:S3cretPW@broker:9092", "kafka://alice:***@broker:9092"),
    ("kafka://alice@broker:9092", "kafka://alice@broker:9092"),
    ("kafks://alice:S3cretPW@h:99999x/x?y=1", "kafks://alice:***@h:99999x/x?y=1"),
    ("postgresql://u:S3cret/PW@db/shop", "postgresql://u:***@db/shop"),
    ("kafka://h:9092?sasl_password=S3cretPW&acks=all", "kafka://h:9092?sasl_password=***&acks=all"),
    ("kafka://h?oauth_client_secret=S3cretPW#x", "kafka://h?oauth_client_secret=***#x"),
    ("sqlite:///data/a@b.db?partitions=2", "sqlite:///data/a@b.db?partitions=2"),
    ("memory://bus", "memory://bus"),
])
def test_redact_url_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", [
    f"kafks://alice:{SECRET}@broker:9092",                 # a mistyped scheme
    f"kafka://alice:{SECRET}@broker:9092?acks=maybe",      # a bad option
    f"kafka://alice:{SECRET}@broker:9092?colour=red",      # an unknown option
    f"sqlite://alice:{SECRET}@host/bus.db",                # a host in a sqlite URL
    f"sqlite:///bus.db?sasl_password={SECRET}",            # an unknown sqlite option
    f"memory://alice:{SECRET}@bus?partitions=many",        # a bad memory option
    f"amqp://alice:{SECRET}@broker:5672/?colour=red",      # an unknown amqp option
    f"mqtt://alice:{SECRET}@broker:1883?colour=red",       # an unknown mqtt option
    f"mqtt://alice:{SECRET}@:1883",                        # an mqtt URL without a host
])
def test_errors_about_a_url_do_not_echo_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_transport(url)
    assert SECRET not in str(caught.value)


def test_a_running_app_logs_its_broker_without_the_password(
        caplog: pytest.LogCaptureFixture) -> None:
    app = App("redacted", broker=f"memory://alice:{SECRET}@redact-bus")
    stop = asyncio.Event()
    stop.set()
    with caplog.at_level(logging.INFO, logger="tidings"):
        asyncio.run(serve(app, stop))
    assert "running on memory://alice:***@redact-bus" in caplog.text
    assert SECRET not in caplog.text
