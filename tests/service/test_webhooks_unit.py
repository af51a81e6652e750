"""Webhook addresses, URLs and signatures, without a server: what is refused, and that the client's ``verify``
accepts exactly what the service signs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json

import pytest
from saft_client import webhooks as client_webhooks

from saft_service import webhooks
from saft_service.tables import WebhookEndpoint, utcnow


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.3.4.5", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.0.10", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::",
])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not webhooks.address_allowed(ipaddress.ip_address(address))
    target = webhooks.Target("http", address, 80, "/")
    with pytest.raises(webhooks.UrlRefused) as e:
        webhooks.resolve(target, allow_private=False)
    assert e.value.code == "webhook_url_not_allowed" and address in e.value.message


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert webhooks.address_allowed(ipaddress.ip_address(address))
    assert webhooks.resolve(webhooks.Target("https", address, 443, "/"), allow_private=False) == address


def test_a_name_that_resolves_to_loopback_is_refused_unless_allowed() -> None:
    target = webhooks.parse_url("http://localhost:8080/hook?x=1")
    assert (target.host, target.port, target.path) == ("localhost", 8080, "/hook?x=1")
    with pytest.raises(webhooks.UrlRefused) as e:
        webhooks.resolve(target, allow_private=False)
    assert e.value.code == "webhook_url_not_allowed" and "'localhost' resolves to" in e.value.message
    assert ipaddress.ip_address(webhooks.resolve(target, allow_private=True)).is_loopback


@pytest.mark.parametrize("url", [
    "ftp://example.com/x", "file:///etc/passwd", "http://", "example.com/hook", "http://user:pw@example.com/",
    "http://example.com:99999/", "http://" + "a" * 2000 + ".com/",
])
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(webhooks.UrlRefused) as e:
        webhooks.parse_url(url)
    assert e.value.code == "invalid_webhook_url"


def test_the_secret_and_signature_follow_standard_webhooks() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"type": "job.succeeded", "data": {"job_id": "job_1"}})
    sig = webhooks.sign(secret, "msg_1", 1700000000, body)
    key = base64.b64decode(secret[6:])
    mac = hmac.new(key, f"msg_1.1700000000.{body}".encode(), hashlib.sha256).digest()
    assert sig == "v1," + base64.b64encode(mac).decode()
    # the spec's own example (standard-webhooks/standard-webhooks, spec/standard-webhooks.md)
    example = webhooks.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
        '{"test": 2432232314}',
    )
    assert example == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_client_verifies_what_the_service_signs_and_nothing_else() -> None:
    now = utcnow()
    endpoint = WebhookEndpoint(secret=webhooks.new_secret(), previous_secret=webhooks.new_secret(),
                               previous_until=now + webhooks.PREVIOUS_SECRET_GRACE)
    body = '{"type":"job.failed","data":{"job_id":"job_2"}}'
    ts = int(now.timestamp())
    headers = {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(ts),
               "Webhook-Signature": webhooks.signature_header(endpoint, "msg_2", ts, body, now)}
    assert len(headers["Webhook-Signature"].split(" ")) == 2  # rotated: the previous secret signs too
    assert client_webhooks.verify(body.encode(), headers, endpoint.secret, now=ts)["type"] == "job.failed"
    assert client_webhooks.verify(body, headers, endpoint.previous_secret, now=ts + 10)["data"]["job_id"] == "job_2"
    refused = [
        (body.replace("failed", "succeeded"), headers, endpoint.secret, ts),  # body changed
        (body, {**headers, "Webhook-Id": "msg_3"}, endpoint.secret, ts),  # id changed
        (body, headers, webhooks.new_secret(), ts),  # another secret
        (body, headers, endpoint.secret, ts + 301),  # too old: a replay
        (body, {k: v for k, v in headers.items() if k != "Webhook-Signature"}, endpoint.secret, ts),
    ]
    for payload, hdrs, secret, at in refused:
        with pytest.raises(client_webhooks.WebhookVerificationError):
            client_webhooks.verify(payload, hdrs, secret, now=at)
    # once the grace has passed, only the new secret signs
    later = now + webhooks.PREVIOUS_SECRET_GRACE
    assert len(webhooks.signature_header(endpoint, "msg_2", ts, body, later).split(" ")) == 1
