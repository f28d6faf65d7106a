"""The AEF front's configuration file and the InterfaceDescription written from a P0 (no sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2msec.capif.aef.config import DEFAULT_PROFILES, load_config, parse_backend
from m2msec.capif.aef.config_file import ConfigAPI, render_config
from m2msec.capif.aef.register import interface_description
from m2msec.errors import ConfigurationError

GOOD = """
listen = "127.0.0.1:8443"
backend = "http://127.0.0.1:8080"
aef_id = "AEF1"
[ccf]
address = "127.0.0.1:8445"
host = "ccf.example"
ca = "ca.pem"
[credentials]
certificate = "aef.crt"
private_key = "aef.key"
[tls]
certificate = "server.crt"
private_key = "server.key"
[[api]]
name = "weather"
prefix = "/weather"
interface = "aef.example:8443/weather"
"""


def files(tmp: Path, text: str = GOOD) -> Path:
    for name in ("ca.pem", "aef.crt", "aef.key", "server.crt", "server.key"):
        (tmp / name).write_bytes(f"-- {name} --".encode())
        if name.endswith(".key"):
            (tmp / name).chmod(0o600)  # private keys readable by others are refused
    (tmp / "aef.toml").write_text(text)
    return tmp / "aef.toml"


def test_a_good_file(tmp_path: Path) -> None:
    config = load_config(files(tmp_path), overrides={"backend": "http://10.0.0.2:81"})
    assert config.listen == ("127.0.0.1", 8443) and config.backend == ("10.0.0.2", 81)
    assert config.issuer == "ccf.example" and config.profiles == DEFAULT_PROFILES
    assert config.private_key_pem == b"-- aef.key --" and config.server_key_pem == b"-- server.key --"
    (api,) = config.apis
    assert (api.name, api.prefix, api.interface, api.api_id) == ("weather", "/weather", "aef.example:8443/weather",
                                                                 None)
    assert api.serves("/weather") and api.serves("/weather/x") and not api.serves("/weatherx")
    assert "server.key" not in repr(config) and "--" not in repr(config)


@pytest.mark.parametrize(("change", "message"), [
    (("aef_id = \"AEF1\"", "aef_id = \"AEF1\"\ncolour = \"blue\""), "unknown keys"),
    (("[tls]", "[tlsx]"), "unknown keys"),
    (("ca = \"ca.pem\"", "ca = \"missing.pem\""), "cannot read"),
    (("http://127.0.0.1:8080", "https://127.0.0.1:8080"), "backend"),
    (("name = \"weather\"\n", ""), "name is required"),
])
def test_bad_files_name_the_problem(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_config(files(tmp_path, GOOD.replace(*change)))


def test_backend_urls() -> None:
    assert parse_backend("http://backend.local") == ("backend.local", 80)
    for bad in ("ftp://x:1", "http://x:1/path", "http://:80"):
        with pytest.raises(ConfigurationError):
            parse_backend(bad)


def test_interface_descriptions_from_p0() -> None:
    assert interface_description("127.0.0.1:8443/api") == {
        "ipv4Addr": "127.0.0.1", "port": 8443, "apiPrefix": "/api", "securityMethods": ["PSK", "PKI", "OAUTH"]}
    assert interface_description("aef.example:443") == {"fqdn": "aef.example", "port": 443,
                                                        "securityMethods": ["PSK", "PKI", "OAUTH"]}
    with pytest.raises(ConfigurationError):
        interface_description("no-port/api")


def test_render_config_writes_what_load_config_reads(tmp_path: Path) -> None:
    """The text of m2msec.capif.aef.config_file (the benchmark's and the CLI test's) loads to the values it was given,
    quotes and backslashes in values included."""
    text = render_config(listen="127.0.0.1:8443", backend="http://127.0.0.1:8080", aef_id='AEF"1\\x',
                         ccf_address="127.0.0.1:8445", ccf_host="ccf.example", issuer="https://issuer.example",
                         ccf_ca="ca.pem", credentials=("aef.crt", "aef.key"),
                         apis=[ConfigAPI("weather", "/weather", "aef.example:8443/weather"),
                               ConfigAPI("maps", "/maps", "aef.example:8443/maps")])
    config = load_config(files(tmp_path, text))
    assert (config.listen, config.backend, config.aef_id) == (("127.0.0.1", 8443), ("127.0.0.1", 8080), 'AEF"1\\x')
    assert (config.ccf_address, config.ccf_host, config.issuer) == (("127.0.0.1", 8445), "ccf.example",
                                                                    "https://issuer.example")
    assert (config.ccf_ca_pem, config.private_key_pem, config.server_key_pem) == (
        b"-- ca.pem --", b"-- aef.key --", b"-- server.key --")
    assert [(a.name, a.prefix, a.interface) for a in config.apis] == [
        ("weather", "/weather", "aef.example:8443/weather"), ("maps", "/maps", "aef.example:8443/maps")]
    assert "issuer" not in render_config(listen="a:1", backend="http://b:2", aef_id="A", ccf_address="c:3",
                                         ccf_host="c", ccf_ca="ca.pem", apis=[])
