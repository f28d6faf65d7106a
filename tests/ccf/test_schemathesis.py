"""Property-based tests of every CCF operation from the official OpenAPI (schemathesis), over real TLS.

For each operation of each bundled TS 29.222 document the CCF serves (``m2msec.capif.openapi.APIS`` less
``aef-security``, which an AEF serves), hypothesis draws schemathesis cases, positive (valid per the schema) and
negative (breaking it), and a caller: the role TS 29.222 gives the operation (an onboarded invoker's certificate, an
AEF/APF/AMF function's certificate, or, for the two onboarding POSTs, no certificate and a fresh single-use onboarding
credential as ``Authorization: Bearer``), sometimes no credential at all; whether the path parameters name the
caller's own resources (else they are what schemathesis drew); and whether the body is made realistic
(:func:`realistic`: real CSRs, the caller's own ids) so that cases get past the first semantic checks. Each case goes
over a new TLS 1.2 connection with ``requests`` to the CCF on 127.0.0.1, the server name ``ccf.test.example`` checked
(:class:`CCFHostAdapter`).

Checks on every answer: no 5xx (``not_a_server_error``), a status the operation lists, the content type and the body
conforming to the official schema (``status_code_conformance``, ``content_type_conformance``,
``response_schema_conformance``); a negative case must be refused with a 4xx (``negative_data_rejection``). The CCF
also runs with ``validate_responses=True``, so a non-conforming answer it builds becomes a 500 the first check catches.

The CCF runs in a thread with its own event loop (the ``world`` machinery of ccf_env, once per module), since
schemathesis and ``requests`` are synchronous. An operation not implemented on a branch answers a 404 ProblemDetails,
which the official files list: such operations pass trivially and are named in the run's output ("404 only").
Provider roles need the API Provider Management registration: when it is not served, their operations run without a
certificate (printed as well). ``M2MSEC_FUZZ_EXAMPLES`` sets hypothesis' examples per operation (default
:data:`MAX_EXAMPLES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from m2msec.capif.openapi import APIS, BUNDLED_DIR

from .ccf_env import CCF_HOST, INVOKERS, PROVIDERS, World, csr_pem, enrolment, key_pem, new_key, start_world

#: hypothesis examples per operation (CI bound: the whole module must stay well under 90 s)
MAX_EXAMPLES: Final = int(os.environ.get("M2MSEC_FUZZ_EXAMPLES", "25"))
#: the CCF's APIs: every bundled document but the AEF's own
CCF_APIS: Final = tuple(api for api in APIS if api != "aef-security")
CHECKS: Final = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
#: generating bodies of the official schemas is slow and large; the bound is MAX_EXAMPLES, not hypothesis' health checks
SLOW_OK: Final = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                  HealthCheck.large_base_example]
#: seconds a request may take before the case fails (a hang is a finding too)
TIMEOUT: Final = 10.0

NONE, ONBOARDING, INVOKER, AEF, APF, AMF = "none", "onboarding", "invoker", "AEF", "APF", "AMF"
PROVIDER_ROLES: Final = (AEF, APF, AMF)


def roles_of(api: str, method: str, path: str) -> tuple[str, ...]:
    """Who calls an operation (TS 29.222 §5: the invoker onboards, discovers, asks for security and tokens; the AMF
    registers and manages providers, the APF publishes, the AEF reads and revokes security contexts; any of them
    subscribes to events)."""
    if method == "POST" and path in ("/onboardedInvokers", "/registrations"):
        return (ONBOARDING,)
    if api in ("api-invoker-management", "service-apis"):
        return (INVOKER,)
    if api == "api-provider-management":
        return (AMF,)
    if api == "published-apis":
        return (APF,)
    if api == "capif-security":
        invoker_side = (method == "PUT" or path.endswith(("/update", "/token")))
        return (INVOKER,) if invoker_side else (AEF,)
    return (INVOKER, AEF, APF, AMF)


def load_schema(api: str) -> Any:
    return schemathesis.openapi.from_dict(json.loads((BUNDLED_DIR / f"{api}.json").read_text()))


SCHEMAS: Final = {api: load_schema(api) for api in CCF_APIS}
OPERATIONS: Final = [(api, method.upper(), path) for api in CCF_APIS
                     for path, item in json.loads((BUNDLED_DIR / f"{api}.json").read_text())["paths"].items()
                     for method in item if method in ("get", "put", "post", "patch", "delete")]


class CCFHostAdapter(HTTPAdapter):
    """Connects where the URL says (127.0.0.1) but sends SNI for, and verifies the certificate against, the CCF's
    host name: urllib3's ``server_hostname`` and ``assert_hostname`` pool arguments."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs.update(server_hostname=CCF_HOST, assert_hostname=CCF_HOST)
        super().init_poolmanager(*args, **kwargs)


@dataclass
class Who:
    """An identity the CCF certified, as files for ``requests``, with the ids its resources go by."""

    role: str
    identity: str
    cert_file: Path
    key_file: Path
    #: the provider domain (apiProvDomId) for provider functions
    domain: str | None = None


@dataclass
class LiveCCF:
    """The CCF running in its own thread, and the callers of the fuzzed requests."""

    world: World
    tmp: Path
    ca_file: Path
    identities: dict[str, Who] = field(default_factory=dict)
    providers_served: bool | None = None
    answered: dict[str, set[int]] = field(default_factory=dict)

    def url(self, api: str) -> str:
        return f"https://127.0.0.1:{self.world.ccf.port}/{api}/v1"

    def session(self, who: Who | None) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # no REQUESTS_CA_BUNDLE, no proxy from the environment: the CCF's CA, on loopback
        s.mount("https://", CCFHostAdapter())
        s.verify = str(self.ca_file)
        if who is not None:
            s.cert = (str(who.cert_file), str(who.key_file))
        return s

    def bearer(self, api: str = "api-invoker-management") -> dict[str, str]:
        """A fresh single-use credential for onboarding (an invoker) or registration (a provider domain, D147)."""
        purpose = "provider" if api == "api-provider-management" else "invoker"
        return {"Authorization": f"Bearer {self.world.credential('fuzzer', purpose=purpose)}"}

    def _files(self, name: str, cert_pem: str, key: bytes) -> tuple[Path, Path]:
        cert_file, key_file = self.tmp / f"{name}.crt", self.tmp / f"{name}.key"
        cert_file.write_text(cert_pem)
        key_file.write_bytes(key)
        return cert_file, key_file

    def onboard(self) -> Who:
        key = new_key()
        with self.session(None) as s:
            r = s.post(self.url("api-invoker-management") + INVOKERS.removeprefix("/api-invoker-management/v1"),
                       json=enrolment(key), headers=self.bearer(), timeout=TIMEOUT)
        assert r.status_code == 201, r.text
        body = r.json()
        ident = body["apiInvokerId"]
        cert_file, key_file = self._files(ident, body["onboardingInformation"]["apiInvokerCertificate"], key_pem(key))
        return Who(INVOKER, ident, cert_file, key_file)

    def register_providers(self) -> bool:
        """AEF, APF and AMF functions of one provider domain through API Provider Management (if served)."""
        keys = {role: new_key() for role in PROVIDER_ROLES}
        token = self.world.credential("fuzzer-provider", purpose="provider")
        details = {"regSec": token, "apiProvDomInfo": "fuzzer provider", "suppFeat": "0",
                   "apiProvFuncs": [{"regInfo": {"apiProvPubKey": csr_pem(k)}, "apiProvFuncRole": role,
                                     "apiProvFuncInfo": f"fuzzer {role}"} for role, k in keys.items()]}
        with self.session(None) as s:
            r = s.post(self.url("api-provider-management") + PROVIDERS.removeprefix("/api-provider-management/v1"),
                       json=details, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
        if r.status_code != 201:
            print(f"\nprovider registration answered {r.status_code}: {r.text[:300]}")
            return False
        try:
            body = r.json()
            for func in body["apiProvFuncs"]:
                role, ident = func["apiProvFuncRole"], func["apiProvFuncId"]
                cert_file, key_file = self._files(ident, func["regInfo"]["apiProvCert"], key_pem(keys[role]))
                self.identities[role] = Who(role, ident, cert_file, key_file, domain=body["apiProvDomId"])
        except (KeyError, TypeError, ValueError) as exc:  # a 201 the contract allows but without what we need
            print(f"\nprovider registration: no certificates in the answer ({exc!r})")
            return False
        return all(role in self.identities for role in PROVIDER_ROLES)

    def who(self, role: str) -> Who | None:
        """The current identity of ``role`` (made when first needed or after a case may have spent it)."""
        if role in (NONE, ONBOARDING):
            return None
        if role == INVOKER and INVOKER not in self.identities:
            self.identities[INVOKER] = self.onboard()
        if role in PROVIDER_ROLES and role not in self.identities:
            if self.providers_served is False:
                return None
            self.providers_served = self.register_providers()
            if not self.providers_served:
                return None
        return self.identities[role]

    def own_id(self, param: str, caller: Who | None) -> str | None:
        """The caller's own id for path parameter ``param`` (None: leave what schemathesis drew)."""
        if param == "subscriberId":
            return caller.identity if caller is not None else None
        if param == "registrationId":
            return caller.domain if caller is not None else None
        role = {"onboardingId": INVOKER, "apiInvokerId": INVOKER, "apfId": APF, "aefId": AEF}.get(param)
        if role is None:
            return None
        who = caller if caller is not None and caller.role == role else self.who(role)
        return who.identity if who is not None else None

    def spent(self, role: str) -> None:
        """A changing request of ``role`` on its own resources succeeded: its certificate may be gone (offboarded,
        replaced by an update), so the next case gets a fresh identity."""
        if role == INVOKER:
            self.identities.pop(INVOKER, None)
        elif role in PROVIDER_ROLES:
            for r in PROVIDER_ROLES:
                self.identities.pop(r, None)


@contextlib.contextmanager
def ccf_thread(tmp: Path) -> Iterator[World]:
    """The ``world`` CCF (real TLS, SQLite, validate_responses) served by an event loop in another thread."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        worlds = start_world(tmp)
        try:
            box["world"], box["stop"] = await anext(worlds), stop
        except BaseException as exc:
            box["error"] = exc
            raise
        finally:
            ready.set()
        try:
            await stop.wait()
        finally:
            await worlds.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="ccf", daemon=True)
    thread.start()
    try:
        ready.wait(30)
        if "world" not in box:
            raise RuntimeError(f"the CCF did not start: {box.get('error')!r}")
        yield box["world"]
    finally:
        if "stop" in box:
            loop.call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCCF]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with ccf_thread(tmp) as world:
        ca_file = tmp / "ca.pem"
        ca_file.write_bytes(world.ca_pem)
        ccf = LiveCCF(world, tmp, ca_file)
        yield ccf
    only_404 = sorted(name for name, statuses in ccf.answered.items() if statuses == {404})
    print(f"\nschemathesis: {len(ccf.answered)} operations; answering only 404 (not served here): {len(only_404)}")
    for name, statuses in sorted(ccf.answered.items()):
        print(f"  {'404 only' if name in only_404 else 'answered'}: {name}: {sorted(statuses)}")
    if ccf.providers_served is False:
        print("  provider roles: API Provider Management not served; their operations ran without a certificate")


#: the members of the official schemas that carry a PKCS#10 request in PEM (an invoker's, a provider function's)
CSR_MEMBERS: Final = ("apiInvokerPublicKey", "apiProvPubKey")
#: members the CCF assigns: a creating POST that sends them is refused, so realistic cases leave them out
ASSIGNED_MEMBERS: Final = ("apiId", "apiInvokerId", "apiProvDomId", "apiProvFuncId")


def realistic(body: Any, live: LiveCCF, method: str, caller: Who | None) -> None:
    """Make a drawn body more like a client's, so that cases reach past the first semantic checks into the handlers'
    work: a real CSR in each CSR member, no CCF-assigned member in a creating POST, the caller's own ids in
    ``aefId`` (the AEF) and ``apiInvokerId`` (the invoker), and an AMF among the functions of a provider domain
    (a registration without one is refused)."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        if method == "POST":
            for key in ASSIGNED_MEMBERS:
                item.pop(key, None)
        funcs = item.get("apiProvFuncs")
        if isinstance(funcs, list) and funcs and isinstance(funcs[0], dict) \
                and not any(isinstance(f, dict) and f.get("apiProvFuncRole") == "AMF" for f in funcs):
            funcs[0]["apiProvFuncRole"] = "AMF"
        for key, value in list(item.items()):
            if key in CSR_MEMBERS and isinstance(value, str):
                item[key] = csr_pem(new_key())
            elif key == "aefId" and isinstance(value, str):
                item[key] = live.own_id("aefId", caller) or value
            elif key == "apiInvokerId" and isinstance(value, str):
                item[key] = live.own_id("apiInvokerId", caller) or value
            else:
                stack.append(value)


def case_strategy(api: str, method: str, path: str) -> st.SearchStrategy[Any]:
    op = SCHEMAS[api][path][method]
    return st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))


@pytest.mark.parametrize(("api", "method", "path"), OPERATIONS, ids=[f"{a} {m} {p}" for a, m, p in OPERATIONS])
def test_operation_answers_by_the_contract(live: LiveCCF, api: str, method: str, path: str) -> None:
    roles = roles_of(api, method, path)
    # the role's own caller three times out of four, no credential at all otherwise
    callers = st.sampled_from([*roles * 3, NONE])

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=SLOW_OK)
    @given(case=case_strategy(api, method, path), role=callers, own=st.booleans(), shaped=st.booleans())
    def run(case: Any, role: str, own: bool, shaped: bool) -> None:
        who = live.who(role)
        if shaped:
            realistic(case.body, live, method, who)
        if own:
            for name in list(case.path_parameters or {}):
                mine = live.own_id(name, who)
                if mine is not None:
                    case.path_parameters[name] = mine
        headers = live.bearer(api) if role == ONBOARDING else None
        negative = case.meta is not None and case.meta.generation.mode.is_negative
        with live.session(who) as session:
            response = case.call(base_url=live.url(api), session=session, headers=headers, timeout=TIMEOUT,
                                 verify=session.verify, cert=session.cert)
        live.answered.setdefault(f"{api} {method} {path}", set()).add(response.status_code)
        if own and who is not None and method != "GET" and response.status_code < 300:
            live.spent(who.role)
        case.validate_response(response, checks=CHECKS + ([negative_data_rejection] if negative else []),
                               headers=headers)

    run()


def test_merge_patch_of_an_enrolment_is_answered(live: LiveCCF) -> None:
    """What the fuzzing found first: every PATCH (application/merge-patch+json) answered 500, its body looked up
    under application/json in the official file. A PATCH of the invoker's own enrolment now changes it."""
    who = live.who(INVOKER)
    assert who is not None
    with live.session(who) as s:
        r = s.patch(f"{live.url('api-invoker-management')}/onboardedInvokers/{who.identity}",
                    data=json.dumps({"apiInvokerInformation": "patched"}),
                    headers={"Content-Type": "application/merge-patch+json"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["apiInvokerInformation"] == "patched"
    assert r.json()["apiInvokerId"] == who.identity


#: a placeholder replaced, in the JSON text, by an escape JSON allows but Unicode does not (a lone surrogate)
_MARK: Final = "\x00lone-surrogate\x00"


def request_media(api: str, method: str, path: str) -> set[str]:
    """The request body media types the official file gives an operation."""
    item = json.loads((BUNDLED_DIR / f"{api}.json").read_text())["paths"][path][method.lower()]
    return set(item.get("requestBody", {}).get("content", {}))


JSON_BODY_OPERATIONS: Final = [op for op in OPERATIONS
                               if request_media(*op) & {"application/json", "application/merge-patch+json"}]


def string_slots(body: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every string value in ``body``."""
    out: list[tuple[Any, Any]] = []
    stack = [body]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, value in pairs:
            if isinstance(value, str):
                out.append((item, key))
            else:
                stack.append(value)
    return out


@pytest.mark.parametrize(("api", "method", "path"), JSON_BODY_OPERATIONS,
                         ids=[f"{a} {m} {p}" for a, m, p in JSON_BODY_OPERATIONS])
def test_a_lone_surrogate_in_a_valid_body_is_refused(live: LiveCCF, api: str, method: str, path: str) -> None:
    """A body valid per the schema but with one string holding ``\\ud800`` (JSON syntax allows the escape; it is not
    Unicode text): refused as 400 INVALID_MSG_FORMAT by a served operation, never a 500 (before: onboarding spent the
    credential, stored the invoker and then failed to encode its answer, a text/plain 500)."""
    roles = roles_of(api, method, path)
    op = SCHEMAS[api][path][method]

    @settings(max_examples=max(5, MAX_EXAMPLES // 5), deadline=None, database=None,
              suppress_health_check=SLOW_OK)
    @given(case=op.as_strategy(GenerationMode.POSITIVE), role=st.sampled_from(roles), data=st.data())
    def run(case: Any, role: str, data: st.DataObject) -> None:
        slots = string_slots(case.body)
        if not slots:
            return
        container, key = data.draw(st.sampled_from(slots))
        container[key] = _MARK
        raw = json.dumps(case.body).replace(json.dumps(_MARK)[1:-1], "\\ud800").encode()
        who = live.who(role)
        for name in list(case.path_parameters or {}):  # the caller's own resources: past the 403 of another's
            mine = live.own_id(name, who)
            if mine is not None:
                case.path_parameters[name] = mine
        headers = {"Content-Type": case.media_type or "application/json",
                   **(live.bearer(api) if role == ONBOARDING else {})}
        url = live.url(api) + case.formatted_path
        with live.session(who) as s:
            r = s.request(method, url, data=raw, headers=headers, timeout=TIMEOUT)
        if r.status_code < 300 and method != "POST":
            live.spent(role)
        assert r.status_code in (400, 404), (r.status_code, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        if r.status_code == 400:
            assert r.json()["cause"] == "INVALID_MSG_FORMAT"

    run()


def test_a_number_beyond_a_double_is_refused(live: LiveCCF) -> None:
    """``1e999`` parses as infinity, which the schema's ``minimum: 0`` (Uncertainty) lets through; echoed, it became
    ``Infinity``, which is not JSON. Refused now."""
    body = enrolment(new_key())
    body["apiList"] = {"serviceAPIDescriptions": [{"apiName": "x", "aefProfiles": [{
        "aefId": "aef", "versions": [{"apiVersion": "v1"}], "domainName": "aef.example",
        "aefLocation": {"geoArea": {"shape": "POINT_UNCERTAINTY_CIRCLE", "point": {"lon": 1, "lat": 1},
                                    "uncertainty": 12345}}}]}]}
    raw = json.dumps(body).replace("12345", "1e999").encode()
    with live.session(None) as s:
        r = s.post(live.url("api-invoker-management") + "/onboardedInvokers", data=raw, timeout=TIMEOUT,
                   headers={**live.bearer(), "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["cause"] == "INVALID_MSG_FORMAT"
        # the same body with a finite number onboards: the refusal is the number's, not the body's
        ok = s.post(live.url("api-invoker-management") + "/onboardedInvokers", data=raw.replace(b"1e999", b"1e300"),
                    timeout=TIMEOUT, headers={**live.bearer(), "Content-Type": "application/json"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["apiList"]["serviceAPIDescriptions"][0]["aefProfiles"][0]["aefLocation"]["geoArea"][
        "uncertainty"] == 1e300


CLOSE_DURING_QUERY: Final = """
import random, sys, tempfile, threading, time
from m2msec.errors import StorageError
from m2msec.store import Document, open_store
path = tempfile.mkdtemp() + "/s.db"
with open_store("sqlite://" + path) as seed:
    for i in range(1000):
        seed.put_document(Document("capif-subscription", f"id{i}", {"x": "y" * 2000}))
for _ in range(int(sys.argv[1])):
    store = open_store("sqlite://" + path)
    def reader():
        try:
            while True:
                store.documents("capif-subscription")
        except StorageError:
            pass
    t = threading.Thread(target=reader)
    t.start()
    time.sleep(random.uniform(0.001, 0.02))
    store.close()
    t.join(10)
    assert not t.is_alive()
print("ok")
"""


def test_closing_the_store_while_a_thread_queries_it_does_not_crash(tmp_path: Path) -> None:
    """Found by this module at its teardown (with the events notifier): SQLiteKeyStore.close() while the store's
    executor thread was inside a query (the notifier's documents() of the subscriptions the fuzzing had created)
    crashed the interpreter with SIGSEGV. Run in a child process, since the failure is a crash."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CLOSE_DURING_QUERY, "60"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "ok"
