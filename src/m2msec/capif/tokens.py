"""The CCF's JWTs (RFC 7519 over RFC 7515 JWS, ES256): onboarding credentials and access tokens; pure, no I/O.

- **Onboarding credential** (TS 33.122 §6.1): the API invoker presents it to the CCF when it onboards; issued by the
  ``m2msec ccf`` admin tooling, verified by the CCF (:func:`verify_onboarding_credential`), revocable by ``jti``.
- **Access token** (TS 33.122 §6.5.2.3 and Annex C, TS 29.222 ``AccessTokenRsp``/``AccessTokenClaims``): the CCF's
  token endpoint answers a ``client_credentials`` grant with one (:func:`issue_access_token`); the AEF verifies it
  locally with the CCF's published keys (:func:`verify_access_token`, issue 19 method 3).

JWS is joserfc's (a maintained JOSE library, D117); this module pins the algorithm (ES256 only, never the header's
choice), the header (``alg``, ``typ``, ``kid`` and nothing else: no ``crit``, ``jku``, ``jwk``, ``b64``), the token
type (RFC 8725 §3.11 explicit typing, so neither kind of token passes for the other), the size, and the claims. Time
(``now``, seconds since the epoch) and the ``jti`` are the caller's. Errors never carry the token or a key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import ECKey

from m2msec.capif.scope import AccessTokenError, Scope, parse_scope
from m2msec.errors import CAPIFError

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ALGORITHM",
    "CONTEXT_CLAIM",
    "DEFAULT_ACCESS_TOKEN_LIFETIME",
    "INSUFFICIENT_SCOPE_CAUSE",
    "INVALID_CREDENTIAL_CAUSE",
    "INVALID_TOKEN_CAUSE",
    "MAX_ACCESS_TOKEN_LEEWAY",
    "MAX_ACCESS_TOKEN_LIFETIME",
    "MAX_TOKEN_LENGTH",
    "ONBOARDING_LEEWAY",
    "ONBOARDING_TOKEN_TYPE",
    "PURPOSES",
    "PURPOSE_CLAIM",
    "AccessTokenClaims",
    "AccessTokenError",
    "OnboardingCredential",
    "TokenRefused",
    "VerificationKeys",
    "issue_access_token",
    "issue_onboarding_credential",
    "key_id",
    "parse_scope",
    "verify_access_token",
    "verify_onboarding_credential",
]

#: D147: the private claim of an onboarding credential saying what it may create, and its values: an API invoker
#: (API Invoker Management onboarding) or an API provider domain (API Provider Management registration)
PURPOSE_CLAIM: Final = "capif_purpose"
#: docs/decisions.md D176: the private claim of an access token naming the generation of the security context it was
#: issued under; the AEF compares it with the generation the CCF gives for the OAUTH entry, so a token from before a
#: re-key or a new PUT is refused at once
CONTEXT_CLAIM: Final = "capif_ctx"
PURPOSES: Final = ("invoker", "provider")
#: the only JWS algorithm signed or accepted (RFC 7518 §3.4: ECDSA P-256 SHA-256)
ALGORITHM: Final = "ES256"
#: docs/decisions.md D117: the longest token (characters) looked at; longer ones are refused before any parsing
MAX_TOKEN_LENGTH: Final = 4096
#: docs/decisions.md D117: clock skew allowed on ``exp``, ``nbf`` and ``iat`` of an onboarding credential (seconds)
ONBOARDING_LEEWAY: Final = 30
#: the ``typ`` header of an onboarding credential (RFC 8725 §3.11; a media type, RFC 7515 §4.1.9)
ONBOARDING_TOKEN_TYPE: Final = "capif-onboarding+jwt"
#: the ``typ`` header of an access token (RFC 9068 §2.1)
ACCESS_TOKEN_TYPE: Final = "at+jwt"
#: docs/decisions.md D118: an access token's lifetime when the caller gives none (seconds; issue 18: ≤ 10 min)
DEFAULT_ACCESS_TOKEN_LIFETIME: Final = 600
#: the longest life an access token may be issued with, and that an AEF accepts (``exp - iat``): a bearer token
#: cannot be revoked, so a misconfigured lifetime must fail loudly rather than mint year-long tokens (D118)
MAX_ACCESS_TOKEN_LIFETIME: Final = 3600
#: the largest clock skew an AEF may allow on an access token (seconds; issue 19: ≤ 30 s)
MAX_ACCESS_TOKEN_LEEWAY: Final = 30
_HEADER_KEYS: Final = frozenset({"alg", "typ", "kid"})

#: TokenRefused causes (the ``cause`` of the ProblemDetails)
INVALID_CREDENTIAL_CAUSE: Final = "INVALID_ONBOARDING_CREDENTIAL"
INVALID_TOKEN_CAUSE: Final = "INVALID_TOKEN"
INSUFFICIENT_SCOPE_CAUSE: Final = "INSUFFICIENT_SCOPE"


class TokenRefused(CAPIFError):
    """A JWT refused by its verifier: HTTP 401 (403 for a valid access token whose scope does not cover the API,
    RFC 6750 §3.1 ``insufficient_scope``). ``reason`` is a short fixed text safe to log ("expired", "revoked",
    "bad signature", ...); ``bearer_error`` the RFC 6750 ``error`` for a ``WWW-Authenticate: Bearer`` header."""

    def __init__(self, what: str, reason: str, *, cause: str, status: int = 401,
                 bearer_error: str = "invalid_token") -> None:
        super().__init__(f"{what} refused: {reason}", status=status, cause=cause)
        self.reason = reason
        self.bearer_error = bearer_error


def _p256_public(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> ec.EllipticCurvePublicKey:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        raise ValueError("ES256 needs an EC P-256 key")
    return public


def key_id(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The ``kid`` of a P-256 key: its RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    return str(ECKey.import_key(_p256_public(key)).thumbprint())


class VerificationKeys:
    """The public keys a verifier accepts, by ``kid`` (several during a key rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey]) -> None:
        self._keys: dict[str, ECKey] = {}
        for key in keys:
            jwk = ECKey.import_key(_p256_public(key))
            self._keys[str(jwk.thumbprint())] = jwk

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> VerificationKeys:
        """The keys of a JWK Set (RFC 7517 §5) as :meth:`jwks` writes it. Raises: ValueError: not a set of P-256
        public keys."""
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("a JWK Set has a 'keys' list")
        keys: list[ec.EllipticCurvePublicKey] = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") != "EC" or "d" in entry:
                raise ValueError("only EC public keys are accepted in a JWK Set")
            try:
                jwk = ECKey.import_key({k: v for k, v in entry.items() if k in ("kty", "crv", "x", "y")})
            except (JoseError, ValueError, TypeError, KeyError) as exc:  # KeyError: an unknown "crv" (issue 21)
                raise ValueError("an invalid EC key in the JWK Set") from exc
            public = jwk.public_key
            assert isinstance(public, ec.EllipticCurvePublicKey)
            keys.append(_p256_public(public))
        return cls(keys)

    def get(self, kid: str) -> ECKey | None:
        return self._keys.get(kid)

    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK Set the CCF publishes to AEFs: public parameters only, ``kid`` = RFC 7638 thumbprint."""
        out: list[dict[str, str]] = []
        for kid, jwk in self._keys.items():
            params = {k: str(v) for k, v in jwk.as_dict(private=False).items()}
            out.append({**params, "kid": kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": out}

    def __repr__(self) -> str:
        return f"VerificationKeys(kids={list(self._keys)!r})"


def _sign(signing_key: ec.EllipticCurvePrivateKey, typ: str, claims: dict[str, Any]) -> str:
    if not isinstance(signing_key, ec.EllipticCurvePrivateKey):
        raise ValueError("ES256 needs an EC P-256 private key")
    _p256_public(signing_key)
    jwk = ECKey.import_key(signing_key)
    header = {"alg": ALGORITHM, "typ": typ, "kid": str(jwk.thumbprint())}
    return jwt.encode(header, claims, jwk, algorithms=[ALGORITHM], default_type=None)


def _check_times(now: int, lifetime: int) -> None:
    if isinstance(now, bool) or not isinstance(now, int) or isinstance(lifetime, bool) or \
            not isinstance(lifetime, int) or lifetime <= 0:
        raise ValueError("now and lifetime are whole seconds, lifetime > 0")


def _verify(token: object, keys: VerificationKeys, typ: str, refuse: Callable[[str], TokenRefused],
            claims_registry: jwt.JWTClaimsRegistry) -> dict[str, Any]:
    """The shared JWS/JWT checks; raises ``refuse(reason)``. Returns the validated claims."""
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    if not isinstance(token, str) or not token:
        raise refuse("no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise refuse("too long")
    if not token.isascii() or token.count(".") != 2:
        raise refuse("not a JWS compact serialization")
    try:
        header = jws.extract_compact(token.encode("ascii")).headers()
    except (JoseError, ValueError, TypeError, RecursionError):  # RecursionError: a deeply nested header (issue 21)
        raise refuse("malformed") from None
    if not set(header) <= _HEADER_KEYS:
        raise refuse("unexpected header parameter")
    if header.get("alg") != ALGORITHM:
        raise refuse("algorithm not allowed")
    if header.get("typ") != typ:
        raise refuse("wrong token type")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise refuse("unknown key")
    try:
        decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
    except BadSignatureError:
        raise refuse("bad signature") from None
    except (JoseError, ValueError, TypeError, RecursionError):
        raise refuse("malformed") from None
    try:
        claims_registry.validate(decoded.claims)
    except ExpiredTokenError:
        raise refuse("expired") from None
    except MissingClaimError as exc:
        raise refuse(f"missing claim ({exc.claim})") from None
    except InvalidClaimError as exc:
        future = exc.claim in ("nbf", "iat") and _future(decoded.claims.get(exc.claim), claims_registry)
        raise refuse("not yet valid" if future else f"invalid claim ({exc.claim})") from None
    except JoseError:
        raise refuse("invalid claims") from None
    return decoded.claims


def _future(value: object, registry: jwt.JWTClaimsRegistry) -> bool:
    """True when ``value`` is a NumericDate later than the registry's now + leeway (``nbf``/``iat`` refused for
    being in the future rather than for their type)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > registry.now + registry.leeway


# -------------------------------------------------------------------------------------------- onboarding credential

@dataclass(frozen=True, slots=True)
class OnboardingCredential:
    """The claims of a verified onboarding credential."""

    issuer: str
    subject: str
    jti: str
    issued_at: int
    expires_at: int
    audience: str | None
    #: what it may create (``PURPOSE_CLAIM``): ``"invoker"`` or ``"provider"``; None when the credential names none
    purpose: str | None = None


def issue_onboarding_credential(signing_key: ec.EllipticCurvePrivateKey, *, issuer: str, subject: str,
                                lifetime: int, now: int, jti: str, audience: str | None = None,
                                purpose: str | None = None) -> str:
    """An onboarding credential for ``subject`` (who onboards) valid from ``now`` for ``lifetime`` seconds:
    ``{iss, sub, iat, nbf, exp, jti[, aud][, capif_purpose]}`` signed ES256, ``kid`` the key's thumbprint;
    ``purpose`` (one of :data:`PURPOSES`) says what it may create (D147)."""
    if purpose is not None and purpose not in PURPOSES:
        raise ValueError(f"purpose is one of {', '.join(PURPOSES)}")
    _check_times(now, lifetime)
    for name, value in (("issuer", issuer), ("subject", subject), ("jti", jti)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    claims: dict[str, Any] = {"iss": issuer, "sub": subject, "iat": now, "nbf": now, "exp": now + lifetime,
                              "jti": jti}
    if audience is not None:
        claims["aud"] = audience
    if purpose is not None:
        claims[PURPOSE_CLAIM] = purpose
    return _sign(signing_key, ONBOARDING_TOKEN_TYPE, claims)


def verify_onboarding_credential(token: object, verification_keys: VerificationKeys, *, issuer: str,
                                 audience: str | None = None, now: int,
                                 revoked: Callable[[str], bool]) -> OnboardingCredential:
    """Verify an onboarding credential: size, header (ES256, type, known ``kid``), signature, ``iss`` exactly
    ``issuer``, ``sub`` and ``jti`` present, ``exp`` required and ``nbf``/``iat`` checked with
    :data:`ONBOARDING_LEEWAY`, ``aud`` (required and matching when ``audience`` is given, refused when present and
    ``audience`` is not: RFC 7519 §4.1.3), then ``revoked(jti)`` false.

    Raises: TokenRefused (401, cause :data:`INVALID_CREDENTIAL_CAUSE`)."""

    def refuse(reason: str) -> TokenRefused:
        return TokenRefused("onboarding credential", reason, cause=INVALID_CREDENTIAL_CAUSE)

    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "sub": {"essential": True},
        "jti": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
    if audience is not None:
        options["aud"] = {"essential": True, "value": audience}
    registry = jwt.JWTClaimsRegistry(now=now, leeway=ONBOARDING_LEEWAY, **options)
    claims = _verify(token, verification_keys, ONBOARDING_TOKEN_TYPE, refuse, registry)
    aud = claims.get("aud")
    if audience is None and aud is not None:
        raise refuse("invalid claim (aud)")
    if aud is not None and not isinstance(aud, str):  # we issue a single audience
        raise refuse("invalid claim (aud)")
    jti = claims["jti"]
    purpose = claims.get(PURPOSE_CLAIM)
    if purpose is not None and purpose not in PURPOSES:
        raise refuse(f"invalid claim ({PURPOSE_CLAIM})")
    if revoked(jti):
        raise refuse("revoked")
    return OnboardingCredential(issuer=claims["iss"], subject=claims["sub"], jti=jti, issued_at=int(claims["iat"]),
                                expires_at=int(claims["exp"]), audience=aud, purpose=purpose)


# ------------------------------------------------------------------------------------------------------ access token

@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    """The claims of a verified access token."""

    issuer: str
    client_id: str
    scope: Scope
    jti: str | None
    expires_at: int
    #: D176: the generation of the security context the token was issued under (:data:`CONTEXT_CLAIM`)
    context: str | None = None


def issue_access_token(signing_key: ec.EllipticCurvePrivateKey, *, issuer: str, client_id: str, scope: str | Scope,
                       now: int, jti: str, lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
                       context: str | None = None) -> dict[str, Any]:
    """The ``AccessTokenRsp`` for ``client_id`` (the API invoker ID) and ``scope``: ``access_token`` a JWT
    ``{iss, iat, exp, client_id, scope, jti}`` (no ``aud``: the scope names the AEFs, D118), ``token_type``
    ``Bearer``, ``expires_in`` = ``lifetime``, ``scope`` in its canonical ``3gpp#`` form; ``context``: the
    generation of the invoker's security context, as :data:`CONTEXT_CLAIM` (D176).

    Raises: AccessTokenError (``invalid_scope``): a malformed scope."""
    _check_times(now, lifetime)
    if lifetime > MAX_ACCESS_TOKEN_LIFETIME:
        raise ValueError(f"an access token lives at most {MAX_ACCESS_TOKEN_LIFETIME} s")
    if not isinstance(client_id, str) or not client_id:
        raise AccessTokenError("invalid_request", "client_id is required")
    if not isinstance(issuer, str) or not issuer or not isinstance(jti, str) or not jti:
        raise ValueError("issuer and jti must be non-empty strings")
    parsed = scope if isinstance(scope, Scope) else parse_scope(scope)
    text = str(parsed)
    claims = {"iss": issuer, "iat": now, "exp": now + lifetime, "client_id": client_id, "scope": text, "jti": jti}
    if context is not None:
        claims[CONTEXT_CLAIM] = context
    token = _sign(signing_key, ACCESS_TOKEN_TYPE, claims)
    if len(token) > MAX_TOKEN_LENGTH:  # every AEF would refuse it: say so now, not with a 401 at each call
        raise AccessTokenError("invalid_scope", f"the scope makes a token longer than {MAX_TOKEN_LENGTH} characters")
    return {"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": text}


def verify_access_token(token: object, keys: VerificationKeys, *, issuer: str, aef_id: str, api_name: str,
                        now: int, leeway: int = MAX_ACCESS_TOKEN_LEEWAY) -> AccessTokenClaims:
    """The AEF's check of a bearer token (issue 19, method 3): size, header (ES256, ``at+jwt``, known ``kid``),
    signature, ``iss`` exactly ``issuer``, ``exp`` required (with ``leeway`` ≤ :data:`MAX_ACCESS_TOKEN_LEEWAY`),
    ``iat``/``nbf`` when present, ``client_id`` present, ``scope`` well formed and covering ``api_name`` of
    ``aef_id``.

    Raises: TokenRefused: 401 (cause :data:`INVALID_TOKEN_CAUSE`), or 403 (cause :data:`INSUFFICIENT_SCOPE_CAUSE`)
    for a valid token whose scope does not cover this AEF and API. ValueError: ``leeway`` out of range."""
    if isinstance(leeway, bool) or not isinstance(leeway, int) or not 0 <= leeway <= MAX_ACCESS_TOKEN_LEEWAY:
        raise ValueError(f"leeway is 0..{MAX_ACCESS_TOKEN_LEEWAY} s")

    def refuse(reason: str) -> TokenRefused:
        return TokenRefused("access token", reason, cause=INVALID_TOKEN_CAUSE)

    registry = jwt.JWTClaimsRegistry(now=now, leeway=leeway, iss={"essential": True, "value": issuer},
                                     exp={"essential": True}, iat={"essential": True},
                                     client_id={"essential": True}, scope={"essential": True})
    claims = _verify(token, keys, ACCESS_TOKEN_TYPE, refuse, registry)
    issued, expires = claims["iat"], claims["exp"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (issued, expires)) or \
            expires - issued > MAX_ACCESS_TOKEN_LIFETIME:
        raise refuse("invalid claim (lifetime)")
    client_id, scope_text, jti = claims["client_id"], claims["scope"], claims.get("jti")
    if not isinstance(client_id, str) or not isinstance(scope_text, str) or not (jti is None or isinstance(jti, str)):
        raise refuse("invalid claim (type)")
    if "aud" in claims:
        raise refuse("invalid claim (aud)")
    context = claims.get(CONTEXT_CLAIM)
    if context is not None and not isinstance(context, str):
        raise refuse("invalid claim (type)")
    try:
        scope = parse_scope(scope_text)
    except AccessTokenError:
        raise refuse("invalid claim (scope)") from None
    if not scope.covers(aef_id, api_name):
        raise TokenRefused("access token", "scope does not cover this AEF and API", cause=INSUFFICIENT_SCOPE_CAUSE,
                           status=403, bearer_error="insufficient_scope")
    return AccessTokenClaims(issuer=claims["iss"], client_id=client_id, scope=scope, jti=jti,
                             expires_at=int(claims["exp"]), context=context)
