"""The MAF procedures (TS-0003 §8.8.2) without sockets, over a real SQLite store and an injected clock."""

from __future__ import annotations

import base64
import calendar
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from m2msec.keys.secret import SecretKey
from m2msec.maf import wire
from m2msec.maf.procedures import MAF, MAFPolicy, Requester, canonical_kmid, client_credential_id
from m2msec.maf.wire import MAFProblem, absolute_id, format_timestamp, parse_timestamp
from m2msec.store import AsyncKeyStore, MAFClient, open_store

SP = "sp.example.com"
FQDN = "maf.sp.example.com"
NOW = 1_800_000_000.0
A = Requester(f"//{SP}/cse-a/CAE1")
B = Requester(f"//{SP}/mn-cse-123456")
C = Requester(f"//{SP}/cse-c")


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def maf(tmp_path: Path, clock: Clock) -> AsyncIterator[MAF]:
    store = open_store(f"sqlite://{tmp_path}/maf.db", SecretKey(bytes(range(32))), clock=clock)
    try:
        yield MAF(AsyncKeyStore(store), MAFPolicy(FQDN, SP), clock=clock)
    finally:
        store.close()


def ts(offset: float) -> str:
    return format_timestamp(NOW + offset)


async def registered(maf: MAF, *who: Requester) -> None:
    for w in who:
        await maf.register_client(w, wire.ClientRegistrationRequest(mafFQDN=FQDN, expirationTime=ts(3600),
                                                                     adminFQDN="admin.sp.example.com"))


def key_request(**fields: object) -> wire.KeyRegistrationRequest:
    body: dict[str, object] = {"mafFQDN": FQDN, "expirationTime": ts(600), "adminFQDN": "admin.sp.example.com",
                               "SUID": 32, "targetIDs": ["/mn-cse-123456"]}
    body.update(fields)
    return wire.KeyRegistrationRequest.model_validate({k: v for k, v in body.items() if v is not None})


EXPORTED = SecretKey(bytes(range(100, 148)))


def export() -> SecretKey:
    return EXPORTED


async def problem(coro: object) -> MAFProblem:
    with pytest.raises(MAFProblem) as info:
        await coro  # type: ignore[misc]
    return info.value


def test_timestamps_are_m2m_basic_format_in_utc() -> None:
    assert parse_timestamp("20270115T080000") == calendar.timegm((2027, 1, 15, 8, 0, 0, 0, 0, 0))
    assert format_timestamp(calendar.timegm((2027, 1, 15, 8, 0, 0, 0, 0, 0))) == "20270115T080000"
    for bad in ("2027-01-15T08:00:00", "20271315T080000", "20270115T080000Z", ""):
        with pytest.raises(MAFProblem) as info:
            parse_timestamp(bad)
        assert info.value.name == "bad-expiration-time"


def test_identities_are_compared_in_absolute_form() -> None:
    assert absolute_id("/cse-1", SP) == f"//{SP}/cse-1"
    assert absolute_id("cse-1", SP) == f"//{SP}/cse-1"
    assert absolute_id("/cse-1/CAE1", SP) == f"//{SP}/cse-1/CAE1"
    assert absolute_id("//Other.Example.COM/cse-9", SP) == "//other.example.com/cse-9"
    for bad in ("", "/", "//", "//bad_domain/x", "/a/b/c", "/a b", "/a/\x00", "x" * 300):
        with pytest.raises(MAFProblem) as info:
            absolute_id(bad, SP)
        assert info.value.name == "bad-target-ids"


def test_kmid_canonical_form_and_credential_id() -> None:
    assert canonical_kmid("Client-7@MAF.SP.example.com") == "client-7@maf.sp.example.com"
    # TS-0003 §8.2.2.3: formed from the KmID; type 11 = symmetric key shared with the MAF (§12.3.2.1)
    assert client_credential_id("client-7@maf.sp.example.com") == "11-client-7@maf.sp.example.com"


async def test_client_registration_is_shortened_to_the_longest_lifetime(maf: MAF) -> None:
    out = await maf.register_client(A, wire.ClientRegistrationRequest(
        mafFQDN=FQDN.upper(), expirationTime=ts(365 * 86400), adminFQDN="admin.sp.example.com", labels=["x"]))
    assert out.mafClientID == A.identity and out.labels == ["x"]
    assert out.expirationTime == ts(maf.policy.max_registration_lifetime)
    cfg = await maf.client_config(A, out.mafClientRegID, FQDN)
    assert cfg.mafClientCfg.mafClientRegCfg.fqdn == FQDN and cfg.mafClientCfg.mafKeyRegCfg.SUID == 32
    # another client cannot see, change or delete it
    assert (await problem(maf.client_config(B, out.mafClientRegID, FQDN))).name == "unknown-registration"
    assert (await problem(maf.deregister_client(B, out.mafClientRegID, FQDN))).status == 404
    await maf.deregister_client(A, out.mafClientRegID, FQDN)
    assert (await problem(maf.client_config(A, out.mafClientRegID, FQDN))).status == 404


async def test_wrong_maf_fqdn_and_past_expiry_are_refused(maf: MAF) -> None:
    req = wire.ClientRegistrationRequest(mafFQDN="other.example.com", expirationTime=ts(60), adminFQDN="a.b")
    assert (await problem(maf.register_client(A, req))).name == "maf-fqdn-mismatch"
    req = wire.ClientRegistrationRequest(mafFQDN=FQDN, expirationTime=ts(0), adminFQDN="a.b")
    assert (await problem(maf.register_client(A, req))).name == "bad-expiration-time"


async def test_key_procedures_need_a_registration(maf: MAF) -> None:
    assert (await problem(maf.register_key(A, key_request(), export))).name == "not-registered"
    assert (await problem(maf.retrieve_key(B, "00" * 16))).name == "not-registered"


async def test_exported_key_registration_and_retrieval_by_the_target(maf: MAF) -> None:
    await registered(maf, A, B)
    out = await maf.register_key(A, key_request(), export)
    raw = EXPORTED.reveal()
    # TS-0003 §10.3.1 / §10.3.5: KcID = first 16 bytes of the export, RelativeKeyID = hexBinary(KcID)
    assert out.relativeKeyID == raw[:16].hex()
    assert out.targetIDs == [B.identity] and out.sourceMAFClientID == A.identity and out.SUID == 32
    got = await maf.retrieve_key(B, out.relativeKeyID.upper())
    assert base64.b64decode(got.keyValue) == raw[16:]  # Kc = the last 32 bytes
    assert got.sourceMAFClientID == A.identity and got.SUID == 32
    # one exported key per MAF Handshake
    assert (await problem(maf.register_key(A, key_request(), export))).status == 409


async def test_only_targets_retrieve_and_only_before_expiry(maf: MAF, clock: Clock) -> None:
    await registered(maf, A, B, C)
    out = await maf.register_key(A, key_request(), export)
    for who in (A, C):
        assert (await problem(maf.retrieve_key(who, out.relativeKeyID))).name == "not-a-target"
    assert (await problem(maf.retrieve_key(B, "ab" * 16))).name == "unknown-key"
    assert (await problem(maf.retrieve_key(B, "../../etc"))).name == "unknown-key"
    clock.now += 601
    assert (await problem(maf.retrieve_key(B, out.relativeKeyID))).name == "key-expired"


async def test_suid_and_target_rules(maf: MAF) -> None:
    await registered(maf, A)
    for suid in (12, 22, 42, 31, 0):
        assert (await problem(maf.register_key(A, key_request(SUID=suid), export))).name == "bad-suid"
    two = ["/mn-cse-123456", "/cse-c"]
    assert (await problem(maf.register_key(A, key_request(targetIDs=two), export))).name == "bad-target-ids"
    assert (await problem(maf.register_key(A, key_request(targetIDs=[]), export))).name == "bad-target-ids"
    assert (await problem(maf.register_key(A, key_request(SUID=34, targetIDs=None), export))).name == \
        "bad-target-ids"
    out = await maf.register_key(A, key_request(SUID=34, targetIDs=two), export)
    assert out.targetIDs == [B.identity, C.identity]


async def test_supplied_key_value(maf: MAF) -> None:
    await registered(maf, A, B)
    kc = bytes(range(32))
    out = await maf.register_key(A, key_request(keyValue=base64.b64encode(kc).decode()), export)
    assert len(out.relativeKeyID) == 32 and out.relativeKeyID != EXPORTED.reveal()[:16].hex()
    assert base64.b64decode((await maf.retrieve_key(B, out.relativeKeyID)).keyValue) == kc
    for bad in (base64.b64encode(b"short").decode(), base64.b64encode(bytes(65)).decode(), "not base64!"):
        assert (await problem(maf.register_key(A, key_request(keyValue=bad), export))).name == "bad-key-value"


async def test_only_the_source_updates_or_deletes_a_key(maf: MAF, clock: Clock) -> None:
    await registered(maf, A, B, C)
    out = await maf.register_key(A, key_request(), export)
    upd = wire.KeyUpdateRequest(mafFQDN=FQDN, targetIDs=["/cse-c"])
    assert (await problem(maf.update_key(B, out.relativeKeyID, upd))).name == "not-the-source"
    assert (await problem(maf.deregister_key(B, out.relativeKeyID, FQDN))).name == "not-the-source"
    two = wire.KeyUpdateRequest(mafFQDN=FQDN, targetIDs=["/cse-c", "/mn-cse-123456"])
    assert (await problem(maf.update_key(A, out.relativeKeyID, two))).name == "bad-target-ids"
    changed = await maf.update_key(A, out.relativeKeyID, upd)
    assert changed.targetIDs == [C.identity] and changed.expirationTime is None
    assert (await problem(maf.retrieve_key(B, out.relativeKeyID))).name == "not-a-target"
    assert (await maf.retrieve_key(C, out.relativeKeyID)).SUID == 32
    await maf.deregister_key(A, out.relativeKeyID, FQDN)
    assert (await problem(maf.retrieve_key(C, out.relativeKeyID))).name == "unknown-key"


async def test_revoked_client_is_refused_and_its_keys_are_gone(maf: MAF) -> None:
    kmid = "client-a@" + FQDN
    await maf.store.register_client(MAFClient(kmid, SecretKey(bytes(32)), "/cse-a/CAE1"))
    who = await maf.requester_of_kmid(kmid)
    assert who.identity == A.identity
    await registered(maf, who, B)
    out = await maf.register_key(who, key_request(), export)
    assert await maf.revoke_client(kmid) == 1
    assert (await problem(maf.requester_of_kmid(kmid))).name == "client-revoked"
    assert (await problem(maf.retrieve_key(B, out.relativeKeyID))).name == "unknown-key"


async def test_client_without_identity_is_known_by_its_credential_id(maf: MAF) -> None:
    kmid = "anon@" + FQDN
    await maf.store.register_client(MAFClient(kmid, SecretKey(bytes(32)), "", expires=NOW + 10))
    assert (await maf.requester_of_kmid(kmid)).identity == "11-" + kmid
    maf.clock = lambda: NOW + 11
    assert (await problem(maf.requester_of_kmid(kmid))).status == 403



async def test_a_revocation_through_another_instance_takes_effect_within_the_cache_ttl(maf: MAF, clock: Clock) -> None:
    """D74: per-request client and registration reads are reused for CACHE_TTL seconds, never longer."""
    from m2msec.maf.cache import CACHE_TTL

    kmid = "client-a@" + FQDN
    await maf.store.register_client(MAFClient(kmid, SecretKey(bytes(32)), "/cse-a/CAE1"))
    other = MAF(maf.store, maf.policy, clock=clock)  # a second instance on the same database
    await maf.requester_of_kmid(kmid)
    await other.revoke_client(kmid)
    assert (await problem(other.requester_of_kmid(kmid))).name == "client-revoked"  # at once where revoked
    await maf.requester_of_kmid(kmid)  # still cached here
    clock.now += CACHE_TTL
    assert (await problem(maf.requester_of_kmid(kmid))).name == "client-revoked"


async def test_kmid_resolver_answers_a_cached_client_at_once(maf: MAF, clock: Clock) -> None:
    """The MAF Handshake's resolver: lookup_now answers from the client cache only (MISS: the store is read)."""
    from m2msec.maf.cache import CACHE_TTL
    from m2msec.maf.server import kmid_resolver
    from m2msec.transport.psk_resolver import MISS

    kmid = "client-a@" + FQDN
    await maf.store.register_client(MAFClient(kmid, SecretKey(bytes(range(32))), "/cse-a/CAE1"))
    resolver = kmid_resolver(maf)
    lookup_now = resolver.lookup_now  # type: ignore[attr-defined]
    assert lookup_now(kmid) is MISS  # not read yet
    entry = await resolver(kmid)
    assert entry is not None and entry.key.reveal() == bytes(range(32))
    assert lookup_now(kmid) == entry  # the record read for the handshake is reused, as by the requests (D74)
    assert lookup_now("client-a@other.example.com") is None and lookup_now("not a kmid") is None
    assert lookup_now("nobody@" + FQDN) is MISS
    assert await resolver("nobody@" + FQDN) is None
    # an unknown KmID is never cached (made-up KmIDs would flush the real clients out): each one is a store read
    assert lookup_now("nobody@" + FQDN) is MISS
    await maf.revoke_client(kmid)
    assert lookup_now(kmid) is MISS  # revoked here: dropped from the cache, the store says revoked
    assert await resolver(kmid) is None and lookup_now(kmid) is None
    clock.now += CACHE_TTL
    assert lookup_now(kmid) is MISS


async def test_unknown_kmids_do_not_flush_the_client_cache(maf: MAF) -> None:
    """Made-up KmIDs (one per ClientHello, for free) were cached as absent and emptied the cache when it filled."""
    kmid = "client-a@" + FQDN
    await maf.store.register_client(MAFClient(kmid, SecretKey(bytes(32)), "/cse-a/CAE1"))
    await maf.requester_of_kmid(kmid)
    for i in range(2000):
        assert await maf.client(f"ghost-{i}@{FQDN}") is None
    assert maf.cached_client(kmid)[0]  # still answered without a store read
    assert not maf.cached_client(f"ghost-1@{FQDN}")[0]
