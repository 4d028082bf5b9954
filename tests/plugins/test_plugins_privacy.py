"""privacy: dotted paths with wildcards, salted hashes, and IP masking."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import msgspec
import pytest

from relay.plugins import paths
from relay.plugins.builtin.privacy import Privacy, PrivacyOptions, anonymise_ip, salted_sha256

MESSAGE: dict[str, Any] = {
    "type": "identify",
    "userId": "u1",
    "traits": {"email": "a@example.com", "name": "Ann", "address": {"street": "1 Road", "city": "X"}},
    "properties": {"items": [{"sku": "a", "email": "x@y"}, {"sku": "b", "email": "z@y"}]},
    "context": {"ip": "203.0.113.77", "traits": {"email": "a@example.com", "phone": "555"}},
}


@pytest.mark.parametrize(("path", "expected"), [
    ("traits.email", "a@example.com"),
    ("traits.address.city", "X"),
    ("properties.items.1.sku", "b"),
    ("properties.items.9.sku", None),
    ("traits.missing.deeper", None),
    ("userId.nothing", None),
])
def test_get_follows_dotted_paths_and_array_indexes(path: str, expected: Any) -> None:
    assert paths.get(MESSAGE, paths.split(path)) == expected


@pytest.mark.parametrize(("path", "gone", "kept"), [
    ("traits.email", ["traits.email"], ["traits.name", "context.traits.email"]),
    ("*.email", ["traits.email"], ["context.traits.email", "properties.items.0.email"]),
    ("properties.items.*.email", ["properties.items.0.email", "properties.items.1.email"],
     ["properties.items.0.sku"]),
    ("context.traits.*", ["context.traits.email", "context.traits.phone"], ["context.ip"]),
    ("*.*.email", ["context.traits.email"], ["traits.email"]),
    ("traits.address", ["traits.address.city"], ["traits.name"]),
    ("traits.nothing", [], ["traits.email"]),
])
def test_remove_deletes_every_match_of_a_wildcard_path(path: str, gone: list[str], kept: list[str]) -> None:
    message = copy.deepcopy(MESSAGE)
    paths.remove(message, paths.split(path))
    for dotted in gone:
        assert paths.get(message, paths.split(dotted)) is None, dotted
    for dotted in kept:
        assert paths.get(message, paths.split(dotted)) is not None, dotted


def test_remove_whole_array_items_keeps_the_rest_in_order() -> None:
    message = {"properties": {"list": ["a", "b", "c"]}}
    paths.remove(message, paths.split("properties.list.*"))
    assert message == {"properties": {"list": []}}
    message = {"properties": {"list": ["a", "b", "c"]}}
    paths.remove(message, paths.split("properties.list.1"))
    assert message == {"properties": {"list": ["a", "c"]}}


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b"])
def test_bad_path_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a dotted path"):
        paths.split(bad)


@pytest.mark.parametrize(("address", "expected"), [
    ("203.0.113.77", "203.0.113.0"),
    ("10.0.0.1", "10.0.0.0"),
    ("0.0.0.0", "0.0.0.0"),
    (" 8.8.8.8 ", "8.8.8.0"),
    ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
    ("2001:0db8:abcd:0012::1", "2001:db8:abcd::"),
    ("::1", "::"),
    ("::ffff:198.51.100.9", "198.51.100.0"),  # IPv4-mapped: masked as IPv4
    ("fe80::1%eth0", "fe80::"),
    ("256.1.1.1", None),
    ("01.2.3.4", None),
    ("1.2.3", None),
    ("not an ip", None),
    (12345, None),
])
def test_ip_is_masked_to_24_or_48_bits(address: Any, expected: str | None) -> None:
    assert anonymise_ip(address) == expected


def test_hash_is_sha256_of_salt_then_value() -> None:
    assert salted_sha256(b"pepper", "a@b") == hashlib.sha256(b"pepper" + b"a@b").hexdigest()
    assert salted_sha256(b"pepper", 42) == hashlib.sha256(b"pepper42").hexdigest()
    assert salted_sha256(b"pepper", None) is None
    assert salted_sha256(b"a", "x") != salted_sha256(b"b", "x")


async def _privacy(**options: Any) -> Privacy:
    plugin = Privacy()
    await plugin.load(msgspec.convert(options, PrivacyOptions))
    return plugin


async def test_privacy_removes_hashes_and_masks_before_the_message_goes_on() -> None:
    plugin = await _privacy(remove=["context.traits.*", "properties.items.*.email"],
                            hash=["traits.email", "userId"], salt="s")
    message = copy.deepcopy(MESSAGE)
    out = await plugin.event(message)
    assert out["context"] == {"ip": "203.0.113.0", "traits": {}}
    assert out["properties"]["items"] == [{"sku": "a"}, {"sku": "b"}]
    assert out["traits"]["email"] == hashlib.sha256(b"sa@example.com").hexdigest()
    assert out["userId"] == hashlib.sha256(b"su1").hexdigest()
    assert out["traits"]["name"] == "Ann"


async def test_privacy_drops_an_ip_it_cannot_parse_and_can_leave_ips_alone() -> None:
    plugin = await _privacy()
    assert await plugin.event({"context": {"ip": "garbage"}}) == {"context": {}}
    keep = await _privacy(anonymise_ip=False)
    assert await keep.event({"context": {"ip": "1.2.3.4"}}) == {"context": {"ip": "1.2.3.4"}}


async def test_privacy_reads_the_salt_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PII_SALT", "env-salt")
    plugin = await _privacy(hash=["userId"], salt_env="TEST_PII_SALT")
    assert (await plugin.event({"userId": "u"}))["userId"] == hashlib.sha256(b"env-saltu").hexdigest()
    monkeypatch.delenv("TEST_PII_SALT")
    with pytest.raises(ValueError, match="TEST_PII_SALT"):
        await _privacy(hash=["userId"], salt_env="TEST_PII_SALT")


@pytest.mark.parametrize(("options", "error"), [
    ({"hash": ["userId"]}, "`hash` needs a `salt`"),
    ({"remove": ["a..b"]}, "at `$.remove[0]`"),
    ({"salt": 5}, "Expected `str`, got `int` - at `$.salt`"),
    ({"hashes": []}, "unknown field `hashes`"),
])
def test_privacy_options_name_the_bad_key(options: dict[str, Any], error: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(options, PrivacyOptions, strict=True)
    assert error in str(caught.value)
