"""The HTTPS keys of the incoming section (tls_steal, tls_delivery): parsed, defaulted,
and every mistake named by its JSON path."""

from __future__ import annotations

from typing import Any

import pytest
from tether.config import (
    ConfigError,
    TlsCertPair,
    TlsClientVerification,
    TlsDelivery,
    TlsStealPort,
    dump_effective,
    parse_config,
)

P = "feature.network.incoming"
ENTRY = {"port": 8443, "cert_pem": "/etc/tls/tls.crt", "key_pem": "/etc/tls/tls.key"}
FILTER = {"header_filter": "^x-dev: me$"}


def incoming(value: Any) -> dict[str, Any]:
    return {"feature": {"network": {"incoming": value}}}


def problems(value: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(incoming(value))
    return err.value.problems


def test_the_issue_example_parses_with_defaults() -> None:
    loaded = parse_config(incoming({"mode": "steal", "http_filter": FILTER,
                                    "tls_steal": {"ports": [ENTRY]},
                                    "tls_delivery": {"protocol": "tcp"}}))
    inc = loaded.config.feature.network.incoming
    assert loaded.warnings == []
    assert inc.tls_steal == (TlsStealPort(8443, "/etc/tls/tls.crt", "/etc/tls/tls.key",
                                          ("h2", "http/1.1")),)
    assert inc.tls_delivery == TlsDelivery("tcp")
    assert inc.tls_port(8443) == (0, inc.tls_steal[0])
    assert inc.tls_port(8080) is None


def test_delivery_defaults_to_tls_and_https_delivery_is_the_same_key() -> None:
    inc = parse_config(incoming({"mode": "steal"})).config.feature.network.incoming
    assert inc.tls_delivery == TlsDelivery("tls")
    got = parse_config(incoming({"mode": "steal", "https_delivery": {
        "protocol": "tls", "trust_roots": ["ca.pem"], "server_name": "app.test"}}))
    assert got.config.feature.network.incoming.tls_delivery == TlsDelivery(
        "tls", ("ca.pem",), None, "app.test")


def test_mtls_settings_parse() -> None:
    entry = {**ENTRY, "alpn_protocols": ["http/1.1"],
             "client_verification": {"trust_roots": ["/etc/tls/ca.crt"],
                                     "allow_anonymous": True},
             "app_client_cert": {"cert_pem": "/etc/tls/client.crt",
                                 "key_pem": "/etc/tls/client.key"}}
    inc = parse_config(incoming({"mode": "steal", "http_filter": FILTER,
                                 "tls_steal": {"ports": [entry]}})).config.feature.network.incoming
    port = inc.tls_steal[0]
    assert port.alpn_protocols == ("http/1.1",)
    assert port.client_verification == TlsClientVerification(("/etc/tls/ca.crt",), True)
    assert port.app_client_cert == TlsCertPair("/etc/tls/client.crt", "/etc/tls/client.key")


def test_effective_config_reads_back() -> None:
    entry = {**ENTRY, "client_verification": {"trust_roots": ["/ca.pem"]}}
    cfg = parse_config(incoming({"mode": "mirror", "tls_steal": {"ports": [entry]},
                                 "tls_delivery": {"server_cert": "local.pem"}})).config
    assert parse_config(dump_effective(cfg)).config == cfg


@pytest.mark.parametrize("value, message", [
    ({"tls_steal": {"ports": [{**ENTRY, "port": 0}]}},
     f"{P}.tls_steal.ports[0].port: 0 is out of range (1..65535)"),
    ({"tls_steal": {"ports": [{"port": 8443, "key_pem": "/k"}]}},
     f"{P}.tls_steal.ports[0].cert_pem: missing (required)"),
    ({"tls_steal": {"ports": [{**ENTRY, "cert_pem": "tls.crt"}]}},
     f"{P}.tls_steal.ports[0].cert_pem: 'tls.crt' is not an absolute path (a file in the "
     "target's filesystem, e.g. /etc/tls/tls.crt)"),
    ({"tls_steal": {"ports": [{**ENTRY, "alpn_protocols": ["h3"]}]}},
     f"{P}.tls_steal.ports[0].alpn_protocols[0]: 'h3' is not one of h2, http/1.1, http/1.0 "
     "(the agent filters HTTP)"),
    ({"tls_steal": {"ports": [ENTRY, ENTRY]}},
     f"{P}.tls_steal.ports[1].port: port 8443 is listed twice"),
    ({"tls_steal": {"ports": [{**ENTRY, "cert": "/x"}]}},
     f"{P}.tls_steal.ports[0].cert: unknown key (did you mean 'cert_pem'?)"),
    ({"tls_steal": {"port": 8443}},
     f"{P}.tls_steal.port: unknown key (did you mean 'ports'?)"),
    ({"tls_steal": {"ports": [{**ENTRY, "client_verification": {"trust_roots": []}}]}},
     f"{P}.tls_steal.ports[0].client_verification.trust_roots: cannot be empty (list the CA "
     "certificates the application trusts for its clients)"),
    ({"tls_steal": {"ports": [{**ENTRY, "app_client_cert": {"cert_pem": "/c"}}]}},
     f"{P}.tls_steal.ports[0].app_client_cert.key_pem: missing (required)"),
    ({"tls_delivery": {"protocol": "https"}},
     f"{P}.tls_delivery.protocol: 'https' is not one of tcp, tls"),
    ({"tls_delivery": {"trust_roots": [1]}},
     f"{P}.tls_delivery.trust_roots[0]: expected a string, got 1"),
    ({"tls_delivery": {}, "https_delivery": {}},
     f"{P}: set only one of tls_delivery, https_delivery (the same setting)"),
])
def test_mistakes_name_the_json_path(value: dict[str, Any], message: str) -> None:
    assert message in problems({"mode": "steal", "http_filter": FILTER, **value})


@pytest.mark.parametrize("value, warning", [
    ({"mode": "steal", "tls_steal": {"ports": [ENTRY]}},
     f"{P}.tls_steal: has no effect without http_filter: a stolen port is taken whole "
     "(its TLS goes to the local program untouched)"),
    ({"mode": "off", "tls_steal": {"ports": [ENTRY]}}, f"{P}.tls_steal: has no effect with mode off"),
    ({"mode": "mirror", "shadow": True, "tls_steal": {"ports": [ENTRY]}},
     f"{P}.shadow: tls_steal ports are mirrored without comparing answers (shadow covers "
     "plain-text ports)"),
])
def test_settings_without_effect_warn(value: dict[str, Any], warning: str) -> None:
    assert parse_config(incoming(value)).warnings == [warning]


def test_verify_config_names_every_tls_mistake_by_path(tmp_path: Any) -> None:
    import json
    import subprocess

    from e2e_support import tether_cmd

    bad = tmp_path / "tls.json"
    bad.write_text(json.dumps(incoming({
        "mode": "steal", "http_filter": FILTER,
        "tls_steal": {"ports": [{"port": 8443, "cert_pem": "tls.crt"}]},
        "tls_delivery": {"protocol": "quic"}})))
    res = subprocess.run([*tether_cmd(), "verify-config", str(bad)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 1
    for line in (f"{P}.tls_steal.ports[0].cert_pem: 'tls.crt' is not an absolute path",
                 f"{P}.tls_steal.ports[0].key_pem: missing (required)",
                 f"{P}.tls_delivery.protocol: 'quic' is not one of tcp, tls"):
        assert line in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
