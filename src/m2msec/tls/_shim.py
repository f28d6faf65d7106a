"""The shim over OpenSSL's raw bindings: the only module of m2msec that touches them.

pyOpenSSL exposes no PSK API (pyca/pyopenssl#704 declined one), so the PSK callbacks, TLS 1.3 suites, DH
parameters, trust store swaps and the fast BIO/SSL read paths go through the private ``OpenSSL._util`` cffi
bindings (``_lib``/``_ffi``) and private attributes of pyOpenSSL objects (``_context``, ``_ssl``, ...), all
listed in :data:`PRIVATE_BINDINGS` and checked at import by :func:`check_bindings` (and by the contract test,
tests/tls/test_contract.py). Everything else in :mod:`m2msec.tls` calls the small functions below; a test
fails if another module names ``_lib``, ``_ffi`` or ``OpenSSL._util``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL import crypto as _crypto

from m2msec.errors import ConfigurationError

#: Private names the PSK shim depends on (docs/tls-stack.md gotcha 5). The contract test asserts them.
PRIVATE_BINDINGS: tuple[str, ...] = (
    "OpenSSL._util.lib.SSL_CTX_set_psk_server_callback",
    "OpenSSL._util.lib.SSL_CTX_set_psk_client_callback",
    "OpenSSL._util.lib.SSL_CTX_use_psk_identity_hint",
    "OpenSSL._util.lib.SSL_CTX_set_ciphersuites",
    "OpenSSL._util.lib.SSL_CTX_set_tmp_dh",
    "OpenSSL._util.lib.PEM_read_bio_DHparams",
    "OpenSSL._util.lib.BIO_new_mem_buf",
    "OpenSSL._util.lib.i2d_SSL_SESSION",
    "OpenSSL._util.lib.X509_STORE_new",  # CRL reload: a fresh trust store per CRL update
    "OpenSSL._util.lib.X509_STORE_free",
    "OpenSSL._util.lib.SSL_CTX_set_cert_store",
    "OpenSSL._util.lib.SSL_get_session",
    "OpenSSL._util.lib.SSL_session_reused",  # TLS 1.3: did the server accept our external PSK? (D38)
    "OpenSSL._util.ffi.callback",
    "OpenSSL.SSL.Context._context",
    "OpenSSL.SSL.Connection._ssl",
    "OpenSSL.SSL.Connection._reverse_mapping",
    "OpenSSL.SSL.Connection._from_ssl",
    "OpenSSL.SSL.Connection._raise_ssl_error",
    "OpenSSL._util.lib.BIO_read",
    "OpenSSL._util.lib.SSL_do_handshake",
    "OpenSSL._util.lib.SSL_read",
    "OpenSSL._util.lib.SSL_get_error",
    "OpenSSL._util.lib.SSL_ERROR_WANT_READ",
    "OpenSSL._util.lib.SSL_ERROR_ZERO_RETURN",
    "OpenSSL._util.lib.X509_verify_cert_error_string",
    "OpenSSL._util.lib.BIO_write",  # feed(): bytes in without pyOpenSSL's bio_write wrapper
    "OpenSSL._util.lib.SSL_version",  # session_facts(): version, cipher and server name in one go
    "OpenSSL._util.lib.SSL_get_version",
    "OpenSSL._util.lib.SSL_get_current_cipher",
    "OpenSSL._util.lib.SSL_CIPHER_get_name",
    "OpenSSL._util.lib.SSL_get_servername",
    "OpenSSL._util.lib.TLSEXT_NAMETYPE_host_name",
    "OpenSSL._util.lib.SSL_CTX_set_mode",
    "OpenSSL._util.lib.SSL_MODE_RELEASE_BUFFERS",
    "OpenSSL._util.ffi.unpack",
    "OpenSSL._util.lib.BIO_get_mem_data",  # input_pending(): skip an SSL_read that cannot return anything
    "OpenSSL._util.lib.SSL_pending",
    "OpenSSL.SSL.Connection._into_ssl",
    "OpenSSL.SSL.Connection._handle_bio_errors",
)

_READ_CHUNK = 65536


def _private(path: str) -> Any:
    import importlib

    parts = path.split(".")
    obj: Any = importlib.import_module(".".join(parts[:2]))
    for part in parts[2:]:
        obj = getattr(obj, part)
    return obj


def check_bindings() -> None:
    """Raise :class:`ConfigurationError` naming every private binding the PSK shim needs but cannot find."""
    missing: list[str] = []
    for path in PRIVATE_BINDINGS:
        owner, _, attr = path.rpartition(".")
        try:
            holder = _private(owner)
        except (ImportError, AttributeError):
            missing.append(path)
            continue
        if attr in {"_context", "_ssl", "_from_ssl", "_into_ssl"}:
            # instance attributes: check on a throw-away object
            ctx = SSL.Context(SSL.TLS_METHOD)
            probe: Any = ctx if attr == "_context" else SSL.Connection(ctx, None)
            if not hasattr(probe, attr):
                missing.append(path)
        elif not hasattr(holder, attr):
            missing.append(path)
    if missing:
        raise ConfigurationError(
            "the installed pyOpenSSL/cryptography lack the PSK bindings m2msec needs: " + ", ".join(missing)
        )


check_bindings()
from OpenSSL._util import ffi as _ffi  # noqa: E402  (private: see PRIVATE_BINDINGS)
from OpenSSL._util import lib as _lib  # noqa: E402


def openssl_version() -> str:
    """Version string of the OpenSSL the engine runs on (the one bundled in the cryptography wheel)."""
    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()



# --------------------------------------------------------------------------------------------------
# context-level bindings


def set_ciphersuites(ctx: SSL.Context, suites: str) -> bool:
    """SSL_CTX_set_ciphersuites (TLS 1.3 suites); False when OpenSSL rejects the list."""
    return bool(_lib.SSL_CTX_set_ciphersuites(ctx._context, suites.encode()) == 1)


def release_buffers(ctx: SSL.Context) -> None:
    """SSL_MODE_RELEASE_BUFFERS: a connection frees its record read/write buffers whenever they are empty (an
    idle connection holds none of them; OpenSSL allocates them again for the next record)."""
    _lib.SSL_CTX_set_mode(ctx._context, _lib.SSL_MODE_RELEASE_BUFFERS)


def releases_buffers(ctx: SSL.Context) -> bool:
    """Whether SSL_MODE_RELEASE_BUFFERS is set on *ctx* (SSL_CTX_set_mode with no new bits returns the mode)."""
    return bool(_lib.SSL_CTX_set_mode(ctx._context, 0) & _lib.SSL_MODE_RELEASE_BUFFERS)


def use_psk_identity_hint(ctx: SSL.Context, hint: bytes) -> None:
    _lib.SSL_CTX_use_psk_identity_hint(ctx._context, hint)


#: server PSK handler: (connection, offered identity, room for the key) -> the key, or None to refuse (return 0)
PSKServerHandler = Callable[[SSL.Connection, bytes, int], bytes | None]
#: client PSK handler: (connection or None, identity hint or None, room for identity+NUL, room for key)
#: -> (identity, key), or None to refuse (return 0)
PSKClientHandler = Callable[[SSL.Connection | None, bytes | None, int, int], tuple[bytes, bytes] | None]


def set_psk_server_callback(ctx: SSL.Context, handler: PSKServerHandler) -> object:
    """Install *handler* as the PSK server callback; returns the cffi callback, which must be kept alive."""

    @_ffi.callback("unsigned int(SSL *, char *, unsigned char *, unsigned int)", error=0)  # type: ignore[untyped-decorator]
    def _server_cb(ssl: Any, identity: Any, out: Any, max_len: int) -> int:
        conn = SSL.Connection._reverse_mapping.get(ssl)
        if conn is None or identity == _ffi.NULL:
            return 0
        key = handler(conn, _ffi.string(identity), max_len)
        if key is None:
            return 0
        _ffi.memmove(out, key, len(key))
        return len(key)

    _lib.SSL_CTX_set_psk_server_callback(ctx._context, _server_cb)
    return _server_cb


def set_psk_client_callback(ctx: SSL.Context, handler: PSKClientHandler) -> object:
    """Install *handler* as the PSK client callback; returns the cffi callback, which must be kept alive."""

    @_ffi.callback(
        "unsigned int(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)", error=0
    )  # type: ignore[untyped-decorator]
    def _client_cb(ssl: Any, hint: Any, id_out: Any, max_id: int, psk_out: Any, max_psk: int) -> int:
        conn = SSL.Connection._reverse_mapping.get(ssl)
        result = handler(conn, _ffi.string(hint) if hint != _ffi.NULL else None, max_id, max_psk)
        if result is None:
            return 0
        ident, raw = result
        _ffi.memmove(id_out, ident + b"\0", len(ident) + 1)
        _ffi.memmove(psk_out, raw, len(raw))
        return len(raw)

    _lib.SSL_CTX_set_psk_client_callback(ctx._context, _client_cb)
    return _client_cb


def load_dh(ctx: SSL.Context, pem: bytes) -> None:
    """Set the DHE group from PEM DH parameters (SSL_CTX_set_tmp_dh)."""
    bio = _lib.BIO_new_mem_buf(pem, len(pem))
    try:
        dh = _lib.PEM_read_bio_DHparams(bio, _ffi.NULL, _ffi.NULL, _ffi.NULL)
        if dh == _ffi.NULL:
            raise ConfigurationError("could not load the ffdhe2048 DH parameters")
        try:
            if _lib.SSL_CTX_set_tmp_dh(ctx._context, dh) != 1:
                raise ConfigurationError("OpenSSL refused the ffdhe2048 DH parameters")
        finally:
            _lib.DH_free(dh)
    finally:
        _lib.BIO_free(bio)


def install_trust_store(ctx: SSL.Context, anchors: Sequence[x509.Certificate],
                        crls: Sequence[x509.CertificateRevocationList] | None) -> None:
    """A fresh X509_STORE with *anchors* (and *crls*, CRL checking on) replaces the context's store."""
    raw = _lib.X509_STORE_new()
    if raw == _ffi.NULL:
        raise MemoryError("X509_STORE_new")
    store = _crypto.X509Store.__new__(_crypto.X509Store)
    store._store = raw  # owned by the SSL_CTX once set below
    try:
        for cert in anchors:
            store.add_cert(_crypto.X509.from_cryptography(cert))
        if crls is not None:
            for crl in crls:
                store.add_crl(crl)
            # TS-0003 §8.1.2.2: a revoked certificate is refused (the end-entity's issuer must supply a CRL)
            store.set_flags(_crypto.X509StoreFlags.CRL_CHECK)
    except Exception:
        _lib.X509_STORE_free(raw)
        raise
    _lib.SSL_CTX_set_cert_store(ctx._context, raw)  # frees the previous store


def new_read_buffer() -> Any:
    """A cffi buffer of :data:`_READ_CHUNK` bytes for :func:`drain_bio` and :func:`read_once`."""
    return _ffi.new("char[]", _READ_CHUNK)


def verify_error_string(errno: int) -> str:
    """X509_verify_cert_error_string."""
    return str(_ffi.string(_lib.X509_verify_cert_error_string(errno)).decode("ascii", "replace"))


# --------------------------------------------------------------------------------------------------
# connection-level bindings


def drain_bio(conn: SSL.Connection, buf: Any) -> bytes:
    """Everything in the connection's outgoing BIO (b"" when empty).

    BIO_read straight into *buf*: pyOpenSSL's bio_read raises WantReadError on an empty BIO, and an
    exception per call is a measurable share of a PSK handshake's cost."""
    bio = conn._from_ssl
    n = _lib.BIO_read(bio, buf, _READ_CHUNK)
    if n <= 0:
        return b""
    first: bytes = _ffi.unpack(buf, n)
    if n < _READ_CHUNK:
        return first
    chunks = [first]
    while (n := _lib.BIO_read(bio, buf, _READ_CHUNK)) > 0:
        chunks.append(_ffi.unpack(buf, n))
    return b"".join(chunks)


def feed(conn: SSL.Connection, data: bytes | bytearray | memoryview) -> None:
    """Bytes from the peer into the connection's incoming BIO (pyOpenSSL's bio_write without its checks and
    warnings: *data* is always binary here). Raises :class:`SSL.Error` when OpenSSL refuses them."""
    bio = conn._into_ssl
    n = _lib.BIO_write(bio, data if isinstance(data, bytes) else _ffi.from_buffer(data), len(data))
    if n <= 0:
        conn._handle_bio_errors(bio, n)


def input_pending(conn: SSL.Connection) -> bool:
    """Whether an SSL_read could return anything: bytes wait in the incoming memory BIO, or decrypted data in
    the SSL object. Without either (no read-ahead: OpenSSL takes one record at a time from the BIO) SSL_read
    can only ask for more input."""
    return bool(_lib.BIO_get_mem_data(conn._into_ssl, _ffi.NULL) > 0 or _lib.SSL_pending(conn._ssl) > 0)


#: SSL_version -> SSL_get_version's name, and SSL_CIPHER* -> its name: OpenSSL's static strings, read once
_VERSION_NAMES: dict[int, str] = {}
_CIPHER_NAMES: dict[Any, str] = {}


def session_facts(conn: SSL.Connection) -> tuple[str, str, bytes | None]:
    """(protocol version name, cipher name, SNI host name or None) of a connection, in three C calls."""
    ssl = conn._ssl
    version = _lib.SSL_version(ssl)
    version_name = _VERSION_NAMES.get(version)
    if version_name is None:
        version_name = _VERSION_NAMES[version] = _ffi.string(_lib.SSL_get_version(ssl)).decode("ascii")
    cipher = _lib.SSL_get_current_cipher(ssl)
    cipher_name = ""
    if cipher != _ffi.NULL:
        cipher_name = _CIPHER_NAMES.get(cipher) or _CIPHER_NAMES.setdefault(
            cipher, _ffi.string(_lib.SSL_CIPHER_get_name(cipher)).decode("ascii"))
    name = _lib.SSL_get_servername(ssl, _lib.TLSEXT_NAMETYPE_host_name)
    return version_name, cipher_name, (_ffi.string(name) if name != _ffi.NULL else None)


def do_handshake(conn: SSL.Connection) -> bool | None:
    """One SSL_do_handshake step: True when done, False when it wants more input; raises :class:`SSL.Error`
    from OpenSSL's error queue on failure, or returns None when the queue held no error."""
    ssl = conn._ssl
    rc = _lib.SSL_do_handshake(ssl)
    if rc > 0:
        return True
    if _lib.SSL_get_error(ssl, rc) == _lib.SSL_ERROR_WANT_READ:
        return False
    conn._raise_ssl_error(ssl, rc)  # turns OpenSSL's error queue into an SSL.Error
    return None


#: :func:`read_once` results other than plaintext
READ_WANT_INPUT = 0
READ_CLOSED = 1


def read_once(conn: SSL.Connection, buf: Any) -> bytes | int:
    """One SSL_read into *buf*: the plaintext, :data:`READ_WANT_INPUT` or :data:`READ_CLOSED` (close_notify).
    Other errors are raised as pyOpenSSL raises them (:class:`SSL.ZeroReturnError`, :class:`SSL.WantReadError`,
    :class:`SSL.Error`); an error OpenSSL did not explain reads as :data:`READ_WANT_INPUT`."""
    ssl = conn._ssl
    n = _lib.SSL_read(ssl, buf, _READ_CHUNK)
    if n > 0:
        data: bytes = _ffi.unpack(buf, n)
        return data
    error = _lib.SSL_get_error(ssl, n)
    if error == _lib.SSL_ERROR_WANT_READ:
        return READ_WANT_INPUT
    if error == _lib.SSL_ERROR_ZERO_RETURN:
        return READ_CLOSED
    conn._raise_ssl_error(ssl, n)
    return READ_WANT_INPUT


def session_reused(conn: SSL.Connection) -> bool:
    """SSL_session_reused (TLS 1.3: the server accepted our external PSK, D38)."""
    return bool(_lib.SSL_session_reused(conn._ssl) == 1)


def session_der(conn: SSL.Connection) -> bytes | None:
    """The connection's SSL_SESSION in DER (i2d_SSL_SESSION), or None without one."""
    sess = _lib.SSL_get_session(conn._ssl)
    if sess == _ffi.NULL:
        return None
    size = _lib.i2d_SSL_SESSION(sess, _ffi.NULL)
    if size <= 0:
        return None
    buf = _ffi.new("unsigned char[]", size)
    ptr = _ffi.new("unsigned char **", buf)
    _lib.i2d_SSL_SESSION(sess, ptr)
    return _ffi.buffer(buf, size)[:]  # type: ignore[no-any-return]
