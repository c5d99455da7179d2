"""The PII filter: e-mail, IP and phone redaction, what it must leave alone, its pre-checks."""

from __future__ import annotations

import pytest

from pipeline.config.filters import PIIFilter
from pipeline.data.filters.chain import filter_class
from pipeline.data.filters.pii import PIIDocFilter


def _filter(**kwargs) -> PIIDocFilter:
    return PIIDocFilter(PIIFilter(**kwargs), None)


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("Write to john.doe+news@mail.example.co.uk today.", "Write to <EMAIL> today.", "email"),
        ("Contact: <jane@corp.io>", "Contact: <<EMAIL>>", "email"),
        ("The resolver is 8.8.8.8.", "The resolver is <IP_ADDRESS>.", "ip"),
        ("host 2606:4700:4700::1111 up", "host <IP_ADDRESS> up", "ip"),
        ("http://[2a00:1450:4001:82a::200e]:443/", "http://[<IP_ADDRESS>]:443/", "ip"),
        ("mapped ::ffff:8.8.8.8", "mapped ::ffff:<IP_ADDRESS>", "ip"),
        ("6to4 2002::8.8.8.8 tail", "6to4 <IP_ADDRESS> tail", "ip"),  # one address, not two
        ("Call +1 (415) 555-2671 now", "Call <PHONE_NUMBER> now", "phone"),
        ("London +44 20 7946 0958.", "London <PHONE_NUMBER>.", "phone"),
        ("Paris +33 1 23 45 67 89", "Paris <PHONE_NUMBER>", "phone"),
        ("Berlin +49 (0)30 12345678", "Berlin <PHONE_NUMBER>", "phone"),
        ("tel:+14155552671", "tel:<PHONE_NUMBER>", "phone"),
        ("office (555) 555-5555", "office <PHONE_NUMBER>", "phone"),
        ("cell 555-555-5555, fax 555.555.5555", "cell <PHONE_NUMBER>, fax <PHONE_NUMBER>", "phone"),
        ("toll free 1-800-555-1234", "toll free <PHONE_NUMBER>", "phone"),
    ],
)
def test_redacts_and_counts(text, expected, kind):
    verdict = _filter()([text])
    assert verdict.texts == [expected]
    assert verdict.reasons == [None]  # redaction drops nothing
    placeholder = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE_NUMBER>"}[kind]
    assert verdict.counts == {kind: expected.count(placeholder), "docs_redacted": 1}


PRIVATE = "lan 192.168.1.10, loopback 127.0.0.1, vpn 10.0.0.1, link fe80::1, doc 2001:db8::1, ula fd00::1"


def test_private_ips_kept_only_with_only_public_ips():
    assert _filter()([PRIVATE]).texts is None  # unchanged: no rewritten texts
    redacted = _filter(only_public_ips=False)([PRIVATE])
    assert redacted.texts == [
        "lan <IP_ADDRESS>, loopback <IP_ADDRESS>, vpn <IP_ADDRESS>, link <IP_ADDRESS>, "
        "doc <IP_ADDRESS>, ula <IP_ADDRESS>"
    ]
    assert redacted.counts["ip"] == 6


NOT_PII = [
    "Python 3.11.2 was released on 2024-01-15 at 12:30:45.",
    "MAX = 1234567890  # ten digits, no separators",
    "std::vector<int> v; a::b(); add::dec; x[1::2]; y[10::20]",
    "timestamps 12:30, 12:30:45:123; mac 00:1a:2b:3c:4d:5e",
    "versions 1.2.3, v1.2.3.4.5, 1123.45.67.890, 10.0.19041.1; float 0.0001",
    "uuid 550e8400-e29b-41d4-a716-446655440000, isbn 978-0-306-40615-7, zip 12345-6789",
    "a growth of +100 000 000 people, i + 1, x = y+1234567890, +1.5",
    "@property\ndef f(self): ...  # decorators are not addresses; neither is user@localhost",
]


@pytest.mark.parametrize("only_public", [True, False])
def test_leaves_non_pii_alone(only_public):
    verdict = _filter(only_public_ips=only_public)(NOT_PII)
    assert verdict.texts is None, [t for t in verdict.texts if "<" in t]
    assert verdict.counts == {}


def test_idempotent():
    doc_filter = _filter(only_public_ips=False)
    once = doc_filter(["a@b.com 8.8.8.8 2606:4700::1 +44 20 7946 0958 " + PRIVATE]).texts
    twice = doc_filter(once)
    assert twice.texts is None and twice.counts == {}
    # A placeholder the rules would match (datatrove's style) is not counted again.
    custom = _filter(email_placeholder="email@example.com")
    assert custom(custom(["x@y.org"]).texts).counts == {}


def test_switches():
    text = "a@b.com 8.8.8.8 555-555-5555"
    assert _filter(emails=False)([text]).texts == ["a@b.com <IP_ADDRESS> <PHONE_NUMBER>"]
    assert _filter(ip_addresses=False, phone_numbers=False)([text]).texts == ["<EMAIL> 8.8.8.8 555-555-5555"]
    assert _filter(phone_placeholder="[tel]")([text]).texts == ["<EMAIL> <IP_ADDRESS> [tel]"]


def test_pre_checks_change_nothing():
    """The quick pre-checks skip a rule's regex only where it could not match."""
    doc_filter = _filter(only_public_ips=False)
    samples = [*NOT_PII, PRIVATE, "x +49 (0)30 12345678 [2a00:1450::1] root@[10.1.2.3] 1-800-555-1234"]
    for text in samples:
        full = text
        for rule in doc_filter.rules:
            full = rule.redact(full)[0]
        assert doc_filter.redact(text)[0] == full


def test_registered_in_chain():
    assert filter_class("pii") is PIIDocFilter
