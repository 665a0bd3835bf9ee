"""What `envoy-config` renders for the cases a security review found wrong: each assertion is of the rendered
bootstrap (the e2e tests drive real Envoys through the same renderer)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sidecar.config import load_config
from sidecar.harness import offload
from sidecar.harness.envoy_config import explain, render
from sidecar.harness.offload import CLIENT_ID_HEADER, SYSTEM_CAS
from sidecar.runtime import compile_runtime

CONFIG = """\
server: {watch_config: false}
authorizers:
  corp:
    type: jwt
    issuer: "https://issuer.example"
    jwks_uri: "https://issuer.example/jwks.json"
    audiences: [api]
    algorithms: [RS256]
    identity_source: header.x-token
  public: {type: none}
routes:
  - {match: "GET /orders/{id}", authorizer: corp}
  - {match: "GET /open", authorizer: public}
  - {match: "GET /admin-panel", authorizer: public, scopes: [admin]}
"""


@pytest.fixture(autouse=True)
def _issuer_keys(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """https://issuer.example serves one good key when `envoy-config` fetches it to check it."""
    good = _jwks(tmp_path_factory.mktemp("issuer"), "k1").read_bytes()
    monkeypatch.setattr(offload, "fetch_jwks", lambda uri: good)


def rendered(tmp_path: Path, text: str = CONFIG, template: str = "envoy.yaml", offload: bool = True) -> Any:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text))
    runtime = compile_runtime(load_config(path), private_limits=True)
    return yaml.safe_load(render(runtime, template=template, offload=offload)), runtime


def hcm(doc: Any) -> Any:
    listener = next(x for x in doc["static_resources"]["listeners"] if x["name"] == "ingress")
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_an_https_jwks_server_must_present_a_certificate_for_its_host(tmp_path: Path) -> None:
    doc, _ = rendered(tmp_path)
    cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "jwks_corp")
    tls = cluster["transport_socket"]["typed_config"]
    validation = tls["common_tls_context"]["validation_context"]
    assert tls["sni"] == "issuer.example"
    assert validation["trusted_ca"] == {"filename": SYSTEM_CAS}
    assert validation["match_typed_subject_alt_names"] == [{"san_type": "DNS", "matcher": {"exact": "issuer.example"}}]


def test_an_anonymous_route_with_scopes_stays_on_ext_authz(tmp_path: Path) -> None:
    """The sidecar refuses every request there (403 InsufficientScope); an open Envoy route would allow them."""
    doc, runtime = rendered(tmp_path)
    routes = {r["name"]: r for r in hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]}
    assert "direct_response" not in routes["GET /admin-panel"]
    assert "request_headers_to_add" not in routes["GET /admin-panel"]  # no principal of an open route
    assert "request_headers_to_add" in routes["GET /open"]  # the plain anonymous route is offloaded
    assert "scopes on an anonymous route" in explain(runtime, offload=True)


def test_http_mode_keeps_an_unread_authorization_header_in_envoy(tmp_path: Path) -> None:
    """Envoy's http_service sends Authorization whatever allowed_headers says; no route reads it here."""
    doc, _ = rendered(tmp_path, template="envoy-http.yaml", offload=False)
    filters = [f for f in hcm(doc)["http_filters"] if f["name"].startswith("envoy.filters.http.ext_authz")]
    named = [f["typed_config"] for f in filters if "allowed_headers" in f["typed_config"]]
    assert named and all(c["disallowed_headers"] == {"patterns": [{"exact": "authorization"}]} for c in named)
    reading = CONFIG.replace("    identity_source: header.x-token\n", "")  # the token in Authorization: it must cross
    doc, _ = rendered(tmp_path, reading, template="envoy-http.yaml", offload=False)
    configs = [f["typed_config"] for f in hcm(doc)["http_filters"] if f["name"].startswith("envoy.filters.http.ext")]
    reads = [c for c in configs if {"exact": "authorization"} in c.get("allowed_headers", {}).get("patterns", [])]
    assert reads and not any("disallowed_headers" in c for c in reads)  # the JWT route's filter sends it
    assert any("disallowed_headers" in c for c in configs if c not in reads)  # the anonymous route's does not


def test_a_token_crosses_only_to_routes_whose_authorizer_reads_it(tmp_path: Path) -> None:
    """Each route's filter names what every request needs and what its own authorizer reads: the anonymous
    route's CheckRequest carries no x-token, the JWT route's does, the catch-all's (any route) does."""
    doc, _ = rendered(tmp_path, offload=False)
    filters = {f["name"]: f["typed_config"] for f in hcm(doc)["http_filters"] if "ext_authz" in f["name"]}
    routes = {r["name"]: r for r in hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]}

    def sent(route: str) -> set[str]:
        per_route = routes[route].get("typed_per_filter_config", {})
        (enabled,) = [name for name in filters if not per_route.get(name, {}).get("disabled")]
        return {p["exact"] for p in filters[enabled]["allowed_headers"]["patterns"]}

    assert "x-token" in sent("GET /orders/{id}") and "x-token" not in sent("GET /open")
    assert "x-token" in sent("(catch-all)") and "x-forwarded-for" in sent("GET /open")


def test_one_principal_header_sub_first_then_client_id(tmp_path: Path) -> None:
    """jwt_authn appends claim headers: `sub` to the principal header, `client_id` to a header of its own that a
    mutation moves over only when there was no `sub`, then removes; client copies of both are removed first."""
    text = CONFIG + "upstream_headers: {principal: x-authz-principal}\n"
    doc, _ = rendered(tmp_path, text)
    filters = hcm(doc)["http_filters"]
    names = [f["name"] for f in filters]
    jwt_at = names.index("envoy.filters.http.jwt_authn")
    assert names[jwt_at + 1] == "envoy.filters.http.header_mutation.principal"
    provider = filters[jwt_at]["typed_config"]["providers"]["corp"]
    assert provider["claim_to_headers"] == [
        {"header_name": "x-authz-principal", "claim_name": "sub"},
        {"header_name": CLIENT_ID_HEADER, "claim_name": "client_id"},
    ]
    first, second = filters[jwt_at + 1]["typed_config"]["mutations"]["request_mutations"]
    assert first["append"]["append_action"] == "ADD_IF_ABSENT"
    assert first["append"]["header"] == {"key": "x-authz-principal", "value": f"%REQ({CLIENT_ID_HEADER})%"}
    assert second == {"remove": CLIENT_ID_HEADER}
    stripped = {m.get("remove") for m in filters[0]["typed_config"]["mutations"]["request_mutations"]}
    assert {"x-authz-principal", CLIENT_ID_HEADER} <= stripped


def _jwks(tmp_path: Path, *kids: str | None) -> Path:
    """A JWKS file of RSA keys (2048 bits, what the sidecar takes), one per `kids` entry (None: no kid)."""
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys = []
    for kid in kids:
        public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        keys.append({**jwk, "alg": "RS256", "use": "sig", **({"kid": kid} if kid else {})})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path


def _local(tmp_path: Path, jwks: Path) -> str:
    return CONFIG.replace('    jwks_uri: "https://issuer.example/jwks.json"\n', f'    jwks_file: "{jwks}"\n')


def _kid_required(doc: Any) -> bool:
    routes = hcm(doc)["route_config"]["virtual_hosts"][0]["routes"]
    (rbac,) = [r["typed_per_filter_config"]["envoy.filters.http.rbac"] for r in routes if "rbac" in json_text(r)]
    (principal,) = rbac["rbac"]["rules"]["policies"]["sidecar-rules-1-iat"]["principals"]
    matchers = json_text(principal["and_ids"]["ids"][-1])  # the route's rules, after the token shape
    return matchers.count('{"key": "kid"}') == 1  # required; optional is "absent, or non-empty": two


def json_text(value: Any) -> str:
    import json

    return json.dumps(value)


def test_keys_envoy_would_use_and_the_sidecar_would_not_keep_the_route_on_ext_authz(tmp_path: Path) -> None:
    """A JWK without a kid is tried by jwt_authn for any token's kid; the sidecar matches kids exactly."""
    doc, runtime = rendered(tmp_path, _local(tmp_path, _jwks(tmp_path, "a", None)))
    assert "envoy.filters.http.rbac" not in json_text(hcm(doc)["route_config"])
    assert "a key without a kid" in explain(runtime, offload=True)


def test_a_token_must_name_its_key_unless_there_is_one_local_key(tmp_path: Path) -> None:
    """jwt_authn tries every key for a token without a kid; the sidecar refuses one that several keys fit."""
    assert _kid_required(rendered(tmp_path)[0])  # remote keys: any number
    assert _kid_required(rendered(tmp_path, _local(tmp_path, _jwks(tmp_path, "a", "b")))[0])
    assert not _kid_required(rendered(tmp_path, _local(tmp_path, _jwks(tmp_path, "a")))[0])


def test_remote_keys_are_checked_when_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """jwt_authn uses every key of the issuer's set; a set with a key the sidecar skips, or one that cannot be
    fetched to check it, keeps the route on ext_authz."""
    weak = _jwks(tmp_path, "a", None).read_bytes()  # a kid-less key
    monkeypatch.setattr(offload, "fetch_jwks", lambda uri: weak)
    doc, runtime = rendered(tmp_path)
    assert "envoy.filters.http.rbac" not in json_text(hcm(doc)["route_config"])
    assert "without a kid" in explain(runtime, offload=True)

    def down(uri: str) -> bytes:
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(offload, "fetch_jwks", down)
    _, runtime = rendered(tmp_path)
    assert "could not be read to check them" in explain(runtime, offload=True)


def test_an_ec_key_without_alg_is_not_left_to_jwt_authn() -> None:
    """The sidecar binds a P-384 key to ES384; jwt_authn would take an ES256 signature from it."""
    import json

    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
    data = json.dumps({"keys": [{**jwk, "kid": "p384", "use": "sig"}]}).encode()
    assert "EC key without an alg" in offload._key_problem(data, "keys.json")
    with_alg = json.dumps({"keys": [{**jwk, "kid": "p384", "use": "sig", "alg": "ES384"}]}).encode()
    assert offload._key_problem(with_alg, "keys.json") == ""


def test_a_scope_with_white_space_can_only_be_an_scp_entry(tmp_path: Path) -> None:
    text = CONFIG.replace(
        'GET /orders/{id}", authorizer: corp}', 'GET /orders/{id}", authorizer: corp, scopes: ["a b", ""]}'
    )
    doc, _ = rendered(tmp_path, text)
    (principal,) = _policies(doc)["sidecar-rules-1-iat"]["principals"]
    rbac = principal["and_ids"]["ids"][-1]  # the route's rules, after the token shape
    scopes = json_text(rbac).split('"key": "scp"')
    assert '"key": "scope"' not in json_text(rbac).split("or_ids")[-1]  # no match on the scope string for them
    assert len(scopes) == 3  # one scp list match each


def test_the_internal_client_id_header_cannot_be_a_claim_header(tmp_path: Path) -> None:
    text = CONFIG.replace(
        "    identity_source: header.x-token\n", f"    claim_to_headers: {{scope: {CLIENT_ID_HEADER}}}\n"
    )
    _, runtime = rendered(tmp_path, text)
    assert f"claim_to_headers names {CLIENT_ID_HEADER}" in explain(runtime, offload=True)


def _provider(doc: Any) -> Any:
    jwt = next(f for f in hcm(doc)["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn")
    return jwt["typed_config"]["providers"]["corp"]


def _policies(doc: Any) -> dict[str, Any]:
    (route,) = [r for r in hcm(doc)["route_config"]["virtual_hosts"][0]["routes"] if "rbac" in json_text(r)]
    policies: dict[str, Any] = route["typed_per_filter_config"]["envoy.filters.http.rbac"]["rbac"]["rules"]["policies"]
    return policies


def _condition(doc: Any) -> str:
    return json_text([policy["condition"] for policy in _policies(doc).values()])


def test_the_clock_rules_are_jwt_authns_with_a_skew_of_the_leeway_less_a_second(tmp_path: Path) -> None:
    """jwt_authn refuses at `t > exp + skew` on whole seconds: with skew `leeway - 1` that is the sidecar's
    `now >= exp + leeway` exactly and no CEL restates nbf; with no leeway CEL must. exp is CEL's on every request
    all the same: jwt_authn's JWT cache answers without the skew."""
    doc, _ = rendered(tmp_path)  # the default leeway, 60 s
    assert _provider(doc)["clock_skew_seconds"] == 59
    assert '"nbf"' not in _condition(doc)
    assert '"exp"' in _condition(doc)  # jwt_authn's cache answers without its skew: CEL checks exp every request
    assert '"iat"' in _condition(doc)  # jwt_authn never reads iat
    doc, _ = rendered(tmp_path, CONFIG.replace("    algorithms: [RS256]\n", "    algorithms: [RS256]\n    leeway: 0\n"))
    assert _provider(doc)["clock_skew_seconds"] == 0
    assert '"exp"' in _condition(doc) and '"nbf"' in _condition(doc)


def test_header_parameters_and_claim_types_are_native_matchers_not_cel(tmp_path: Path) -> None:
    """A CEL walk of the metadata costs ~1.5 us; a presence matcher sees a value of any JSON type (crit is a list)."""
    doc, _ = rendered(tmp_path)
    principals = json_text([policy["principals"] for policy in _policies(doc).values()])
    for name in ("crit", "jku", "x5u", "jwk", "client_id", "scope"):
        assert f'"key": "{name}"' in principals, name
    for name in ("crit", "jku", "x5u", "jwk", "client_id"):
        assert f'"{name}"' not in _condition(doc), name


def test_the_access_log_follows_the_sidecars_decision_log_settings(tmp_path: Path) -> None:
    def logs(text: str) -> list[Any]:
        return list(hcm(rendered(tmp_path, text)[0]).get("access_log", []))

    assert len(logs(CONFIG)) == 1
    assert logs(CONFIG + "decision_log: {enabled: false}\n") == []
    (sampled,) = logs(CONFIG + "decision_log: {allow_sample_rate: 0.25}\n")
    assert '"numerator": 250000' in json_text(sampled["filter"])
    assert '"jwt_failure"' in json_text(sampled["filter"])  # refusals are always logged


def test_no_jwt_cache_when_the_sidecars_token_cache_is_off(tmp_path: Path) -> None:
    assert _provider(rendered(tmp_path)[0])["jwt_cache_config"]["jwt_cache_size"] > 0
    text = CONFIG.replace("    algorithms: [RS256]\n", "    algorithms: [RS256]\n    token_cache_size: 0\n")
    assert "jwt_cache_config" not in _provider(rendered(tmp_path, text)[0])


def test_the_common_token_costs_two_metadata_walks(tmp_path: Path) -> None:
    """One policy per token shape, told apart by native matchers, so the common token's condition reads the
    metadata twice (exp, iat) and one without iat or an scp list once."""
    policies = _policies(rendered(tmp_path)[0])
    assert sorted(policies) == ["sidecar-rules-1-iat", "sidecar-rules-2-no-iat", "sidecar-rules-3-scp-list"]
    walks = {name: json_text(p["condition"]).count('"jwt_payload"') for name, p in policies.items()}
    assert walks["sidecar-rules-1-iat"] == 2 and walks["sidecar-rules-2-no-iat"] == 1  # exp (and iat)
