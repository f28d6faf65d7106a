"""The services' JSON documents in the key store (the CCF's invokers, providers, security contexts, its CA key),
the same on SQLite and PostgreSQL (``store_url`` runs each test on both): round trips, the sealed key, integrity,
and the async wrapper."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from m2msec.errors import Conflict, NotFound, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.store import AsyncKeyStore, Document, KeyStore, open_store


@pytest.fixture
def store(store_url: str, master_key: SecretKey) -> Iterator[KeyStore]:
    with open_store(store_url, master_key) as s:
        yield s


INVOKER = {"apiInvokerId": "INV1", "notificationDestination": "https://invoker.example/cb",
           "onboardingInformation": {"apiInvokerPublicKey": "-----BEGIN CERTIFICATE REQUEST-----..."},
           "apiList": [{"apiName": "nef", "aefProfiles": []}], "unicode": "caf\u00e9"}


def test_round_trip_replace_delete(store: KeyStore) -> None:
    doc = Document("capif-invoker", "INV1", INVOKER)
    store.put_document(doc)
    assert store.get_document("capif-invoker", "INV1") == doc
    assert store.get_document("capif-invoker", "INV2") is None
    assert store.get_document("capif-provider", "INV1") is None  # kinds are separate
    with pytest.raises(Conflict):
        store.put_document(doc)
    changed = Document("capif-invoker", "INV1", {**INVOKER, "notificationDestination": "https://x.example/cb"})
    store.put_document(changed, replace=True)
    assert store.get_document("capif-invoker", "INV1") == changed
    with pytest.raises(NotFound):
        store.put_document(Document("capif-invoker", "INV9", INVOKER), replace=True)
    store.delete_document("capif-invoker", "INV1")
    assert store.get_document("capif-invoker", "INV1") is None
    with pytest.raises(NotFound):
        store.delete_document("capif-invoker", "INV1")


def test_a_sealed_key_and_an_expiry(store: KeyStore) -> None:
    key = SecretKey.generate(32)
    doc = Document("capif-aefpsk", "INV1|AEF1|aef.example.com:8443/nef", {"securityId": "S1"}, key, 2e9)
    store.put_document(doc)
    got = store.get_document("capif-aefpsk", doc.record_id)
    assert got is not None and got.key == key and got.expires == 2e9
    assert "redacted" in repr(got) and key.reveal().hex() not in repr(got)
    rows, _ = store._exec("SELECT meta, sealed FROM sealed_record WHERE id = ?", (doc.record_id,))
    assert key.reveal() not in bytes(rows[0][1]) and key.reveal().hex() not in rows[0][0]  # sealed at rest


def test_documents_lists_a_kind_in_id_order(store: KeyStore) -> None:
    for rid in ("b", "a", "c"):
        store.put_document(Document("capif-service", rid, {"apiName": rid}))
    store.put_document(Document("capif-provider", "p", {}))
    assert [d.record_id for d in store.documents("capif-service")] == ["a", "b", "c"]
    assert store.documents("capif-subscription") == []


def test_a_document_changed_without_the_master_key_is_refused(store: KeyStore) -> None:
    store.put_document(Document("capif-security", "INV1", {"securityInfo": [{"selSecurityMethod": "PKI"}]}))
    store._exec("UPDATE sealed_record SET meta = replace(meta, 'PKI', 'PSK') WHERE id = 'INV1'")
    with pytest.raises(StorageError, match="integrity"):
        store.get_document("capif-security", "INV1")
    with pytest.raises(StorageError, match="integrity"):
        store.documents("capif-security")


def test_unknown_kinds_and_non_objects_are_refused() -> None:
    with pytest.raises(StorageError, match="kind"):
        Document("maf-client", "x", {})  # a MAF kind is never a document
    with pytest.raises(StorageError, match="object"):
        Document("capif-invoker", "x", [])  # type: ignore[arg-type]


async def test_the_async_wrapper(store: KeyStore) -> None:
    astore = AsyncKeyStore(store)
    doc = Document("capif-ca", "ca", {"certificate": "-----BEGIN CERTIFICATE-----..."}, SecretKey.generate(138))
    await astore.put_document(doc)
    assert await astore.get_document("capif-ca", "ca") == doc
    await astore.put_document(Document("capif-ca", "ca", {}), replace=True)
    assert [d.body for d in await astore.documents("capif-ca")] == [{}]
    await astore.delete_document("capif-ca", "ca")
    assert await astore.get_document("capif-ca", "ca") is None
