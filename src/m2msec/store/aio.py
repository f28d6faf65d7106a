""":class:`AsyncKeyStore`: a :class:`~m2msec.store.base.KeyStore` used from asyncio without stalling the loop.

Each call runs the synchronous store method in a worker thread (:func:`asyncio.to_thread`); the store's lock
keeps one statement per connection at a time, so a service that wants more parallelism opens more stores.
Reads of an SQLite store run on the loop itself (:data:`INLINE_READS`, docs/decisions.md D73): a read of a local
WAL database takes tens of microseconds and never waits for a writer, while the hand-off to a thread costs five
times that in CPU, the largest single cost of a MAF Key Retrieval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from m2msec.keys.secret import SecretKey
from m2msec.store.base import KeyStore
from m2msec.store.records import ClientRegistration, Document, MAFClient, RegisteredKey

__all__ = ["INLINE_READS", "AsyncKeyStore"]

#: The backends whose reads run on the event loop instead of a worker thread (D73)
INLINE_READS = frozenset({"sqlite"})


class AsyncKeyStore:
    def __init__(self, store: KeyStore, *, inline_reads: bool | None = None) -> None:
        self.store = store
        self.inline_reads = store.backend in INLINE_READS if inline_reads is None else inline_reads

    def __repr__(self) -> str:
        return f"<AsyncKeyStore {self.store!r}>"

    async def register_client(self, client: MAFClient) -> None:
        await asyncio.to_thread(self.store.register_client, client)

    async def get_client(self, kmid: str) -> MAFClient | None:
        if self.inline_reads:
            return self.store.get_client(kmid)
        return await asyncio.to_thread(self.store.get_client, kmid)

    async def update_client(self, client: MAFClient) -> None:
        await asyncio.to_thread(self.store.update_client, client)

    async def delete_client(self, kmid: str) -> None:
        await asyncio.to_thread(self.store.delete_client, kmid)

    async def register_key(self, kc: SecretKey, *, source_id: str, suid: int, target_ids: Sequence[str],
                           expires: float, labels: Sequence[str] = (), admin_fqdn: str | None = None,
                           relative_key_id: str | None = None) -> RegisteredKey:
        def run() -> RegisteredKey:
            return self.store.register_key(kc, source_id=source_id, suid=suid, target_ids=target_ids,
                                           expires=expires, labels=labels, admin_fqdn=admin_fqdn,
                                           relative_key_id=relative_key_id)
        return await asyncio.to_thread(run)

    async def get_key(self, relative_key_id: str) -> RegisteredKey | None:
        if self.inline_reads:
            return self.store.get_key(relative_key_id)
        return await asyncio.to_thread(self.store.get_key, relative_key_id)

    async def update_key(self, key: RegisteredKey) -> None:
        await asyncio.to_thread(self.store.update_key, key)

    async def delete_key(self, relative_key_id: str) -> None:
        await asyncio.to_thread(self.store.delete_key, relative_key_id)

    async def delete_keys_of(self, source_id: str) -> int:
        return await asyncio.to_thread(self.store.delete_keys_of, source_id)

    async def put_registration(self, registration: ClientRegistration) -> None:
        await asyncio.to_thread(self.store.put_registration, registration)

    async def get_registration(self, owner: str) -> ClientRegistration | None:
        if self.inline_reads:
            return self.store.get_registration(owner)
        return await asyncio.to_thread(self.store.get_registration, owner)

    async def delete_registration(self, owner: str) -> None:
        await asyncio.to_thread(self.store.delete_registration, owner)

    async def put_document(self, document: Document, *, replace: bool = False, expect: Document | None = None) -> None:
        await asyncio.to_thread(lambda: self.store.put_document(document, replace=replace, expect=expect))

    async def get_document(self, kind: str, record_id: str) -> Document | None:
        if self.inline_reads:
            return self.store.get_document(kind, record_id)
        return await asyncio.to_thread(self.store.get_document, kind, record_id)

    async def delete_document(self, kind: str, record_id: str) -> None:
        await asyncio.to_thread(self.store.delete_document, kind, record_id)

    async def documents(self, kind: str) -> list[Document]:
        return await asyncio.to_thread(self.store.documents, kind)

    async def purge_expired(self) -> int:
        return await asyncio.to_thread(self.store.purge_expired)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
