"""Kafka settings for production: replication and min.insync.replicas of the topics
tidings creates, mTLS, OAUTHBEARER (OIDC), no empty passwords, and a warning when data
would cross the network in clear text."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tidings import ConfigurationError
from tidings._records import OutRecord
from tidings.backends.kafka import from_url
from tidings.backends.kafka._settings import parse_url


def test_topics_get_the_replication_and_min_insync_replicas_asked_for(kafka_url: str) -> None:
    topic = f"prod-{uuid.uuid4().hex[:8]}"
    url = f"{kafka_url}&replication_factor=1&min_insync_replicas=1&delay_forwarder=false"

    async def main() -> None:
        transport = from_url(url)
        await transport.start()
        try:
            await transport.append([OutRecord(topic, b"x")])
        finally:
            await transport.close()

    asyncio.run(main())
    admin = AdminClient({"bootstrap.servers": parse_url(kafka_url).bootstrap_servers})
    futures = admin.describe_configs([ConfigResource("topic", topic)])
    config = next(iter(futures.values())).result(10)
    assert config["min.insync.replicas"].value == "1"
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    assert {len(p.replicas) for p in partitions.values()} == {1}


def test_by_default_topics_take_the_cluster_defaults() -> None:
    settings = parse_url("kafka://127.0.0.1:9092")
    assert settings.replication_factor is None and settings.topic_config() == {}
    with pytest.raises(ConfigurationError, match="min_insync_replicas cannot exceed"):
        parse_url("kafka://127.0.0.1:9092?replication_factor=2&min_insync_replicas=3")


def test_mutual_tls_maps_to_librdkafka_ssl_settings() -> None:
    settings = parse_url(
        "kafka://k1:9093?security_protocol=SSL&ssl_ca_file=/etc/kafka/ca.pem"
        "&ssl_cert_file=/etc/kafka/billing.pem&ssl_key_file=/etc/kafka/billing.key"
        "&ssl_key_password=k3y")
    config = settings.producer_config()
    assert config["security.protocol"] == "SSL"
    assert (config["ssl.ca.location"], config["ssl.certificate.location"],
            config["ssl.key.location"], config["ssl.key.password"]) == (
        "/etc/kafka/ca.pem", "/etc/kafka/billing.pem", "/etc/kafka/billing.key", "k3y")
    assert "k3y" not in repr(settings)
    with pytest.raises(ConfigurationError, match="both ssl_cert_file and ssl_key_file"):
        parse_url("kafka://k1:9093?security_protocol=SSL&ssl_cert_file=/c.pem")
    with pytest.raises(ConfigurationError, match="need security_protocol=SSL"):
        parse_url("kafka://k1:9093?ssl_cert_file=/c.pem&ssl_key_file=/k.pem")


def test_oauthbearer_maps_to_librdkafka_oidc_settings() -> None:
    settings = parse_url(
        "kafka://k1:9093?security_protocol=SASL_SSL&sasl_mechanism=OAUTHBEARER"
        "&oauth_token_url=https://idp.example/token&oauth_client_id=billing"
        "&oauth_client_secret=s3cret&oauth_scope=kafka")
    config = settings.consumer_config("g", "earliest")
    assert {k: v for k, v in config.items() if k.startswith("sasl.")} == {
        "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
        "sasl.oauthbearer.token.endpoint.url": "https://idp.example/token",
        "sasl.oauthbearer.client.id": "billing", "sasl.oauthbearer.client.secret": "s3cret",
        "sasl.oauthbearer.scope": "kafka"}
    with pytest.raises(ConfigurationError, match="oauth_token_url, oauth_client_id") as caught:
        from_url("kafka://k1:9093?security_protocol=SASL_SSL&sasl_mechanism=OAUTHBEARER"
                 "&oauth_client_secret=s3cret")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "kafka://alice@k1:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512",
    "kafka://alice:@k1:9093?security_protocol=SASL_SSL&sasl_mechanism=SCRAM-SHA-512",
])
def test_a_user_without_a_password_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="password"):
        from_url(url)


def test_clear_text_to_another_machine_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tidings.kafka"):
        parse_url("kafka://127.0.0.1:9092,localhost:9093,[::1]:9094")
        assert caplog.text == ""
        parse_url("kafka://alice:pw@kafka-1.prod:9092,127.0.0.1:9092"
                  "?security_protocol=SASL_PLAINTEXT&sasl_mechanism=PLAIN")
    assert "a password and every message in clear text to kafka-1.prod" in caplog.text
    assert ":pw@" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tidings.kafka"):
        parse_url("kafka://kafka-1.prod:9093?security_protocol=SSL")
    assert caplog.text == ""
