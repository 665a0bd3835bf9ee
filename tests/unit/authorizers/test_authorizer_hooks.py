"""The hooks through which the spine asks an authorizer type what it needs, instead of naming the type: each
built-in type's identity side, watched files, upstream header names and per-route options."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import ValidationError

from sidecar.authorizers import Authorizer, AuthorizerSettings, BuildContext
from sidecar.authorizers.base import registry, types_accepting
from sidecar.reasons import Denied
from sidecar.request import Principal, Request
from sidecar.settings import ApiSettings, MtlsSettings
from tests.unit.authorizers.jwt.jwt_testkit import ISSUER, Issuer
from tests.unit.authorizers.mtls.certs_testkit import Pki, write_truststore

ISS = Issuer.default()


def write_files(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(ISS.jwks()))
    write_truststore(tmp_path / "ca.pem", Pki().root)
    (tmp_path / "credentials.yaml").write_text(
        textwrap.dedent(
            """\
            credentials:
              - access_key_id: AKIDEXAMPLE
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
                principal_arn: arn:aws:iam::123456789012:user/alice
            """
        )
    )


def settings_of(spec: dict[str, Any]) -> AuthorizerSettings:
    return registry()[spec["type"]].settings.model_validate(spec)


def build(settings: AuthorizerSettings, tmp_path: Path) -> Authorizer:
    ctx = BuildContext(name="a", base_dir=tmp_path, api=ApiSettings(), mtls=MtlsSettings(truststore="ca.pem"))
    return registry()[settings.type].build(settings, ctx)


COGNITO = {"type": "cognito", "region": "us-east-1", "user_pool_id": "us-east-1_AbC123", "client_ids": ["app"]}
LAMBDA = {"type": "lambda", "handler": "tests.unit.authorizers.custom.handlers:token_handler"}
SIGV4 = {"type": "sigv4", "credentials": {"file": "credentials.yaml", "reload_interval": 0}}

# (settings, identity side, watched files relative to the config directory, upstream header names, route options)
CASES: list[tuple[dict[str, Any], str, tuple[str, ...], frozenset[str], frozenset[str]]] = [
    ({"type": "none"}, "anonymous", (), frozenset(), frozenset()),
    ({"type": "deny"}, "policies", (), frozenset(), frozenset()),
    (
        {"type": "jwt", "issuer": ISSUER, "audiences": ["orders"], "jwks_file": "jwks.json"},
        "authenticated",
        ("jwks.json",),
        frozenset(),
        frozenset(),
    ),
    (
        {
            "type": "jwt",
            "issuer": ISSUER,
            "audiences": ["orders"],
            "jwks_file": "jwks.json",
            "claim_to_headers": {"sub": "X-User", "tenant": "x-tenant"},
        },
        "authenticated",
        ("jwks.json",),
        frozenset({"x-user", "x-tenant"}),
        frozenset(),
    ),
    (
        {"type": "jwt", "issuer": "https://idp.example.test", "audiences": ["orders"]},
        "authenticated",
        (),  # keys fetched from the issuer refresh on their own
        frozenset(),
        frozenset(),
    ),
    ({**COGNITO, "jwks_file": "jwks.json"}, "authenticated", ("jwks.json",), frozenset(), frozenset()),
    (
        {**COGNITO, "claim_to_headers": {"cognito:username": "x-user"}},
        "authenticated",
        (),
        frozenset({"x-user"}),
        frozenset(),
    ),
    (SIGV4, "policies", (), frozenset(), frozenset({"replay_guard"})),
    (
        {**SIGV4, "upstream_headers": {"access_key_id": "X-Access-Key", "principal_arn": "x-principal-arn"}},
        "policies",
        (),  # the credentials file is watched by its own store, not by a config reload
        frozenset({"x-access-key", "x-principal-arn"}),
        frozenset({"replay_guard"}),
    ),
    (
        {**SIGV4, "upstream_headers": {"principal_arn": "x-principal-arn"}},
        "policies",
        (),
        frozenset({"x-principal-arn"}),
        frozenset({"replay_guard"}),
    ),
    ({**LAMBDA}, "policies", (), frozenset(), frozenset()),
    ({"type": "mtls"}, "authenticated", (), frozenset(), frozenset()),  # the truststore reloads on its own
    (
        {**LAMBDA, "context_to_headers": {"tenant": "X-Tenant", "tier": "x-tier"}},
        "policies",
        (),
        frozenset({"x-tenant", "x-tier"}),
        frozenset(),
    ),
]


@pytest.mark.parametrize(("spec", "side", "watched", "headers", "options"), CASES)
async def test_each_built_in_type_answers_the_hooks(
    tmp_path: Path,
    spec: dict[str, Any],
    side: str,
    watched: tuple[str, ...],
    headers: frozenset[str],
    options: frozenset[str],
) -> None:
    write_files(tmp_path)
    settings = settings_of(spec)
    authorizer = build(settings, tmp_path)
    try:
        assert type(authorizer).identity_side == side
        assert settings.watched_files(tmp_path) == tuple(tmp_path / name for name in watched)
        assert settings.upstream_header_names() == headers
        assert settings.upstream_header_names() == authorizer.upstream_header_names()  # known before building
        assert type(settings).route_options == options
    finally:
        await authorizer.stop()


def test_every_built_in_type_is_covered() -> None:
    built_in = {name for name, entry in registry().items() if entry.settings.__module__.startswith("sidecar.")}
    assert {spec["type"] for spec, *_ in CASES} == built_in  # plugins registered by other tests aside


def test_only_sigv4_routes_take_replay_guard() -> None:
    assert types_accepting("replay_guard") == ("sigv4",)
    assert types_accepting("no_such_option") == ()


def test_an_absolute_jwks_file_is_watched_where_it_is(tmp_path: Path) -> None:
    write_files(tmp_path)
    elsewhere = tmp_path / "keys" / "jwks.json"
    settings = settings_of({"type": "jwt", "issuer": ISSUER, "audiences": ["orders"], "jwks_file": str(elsewhere)})
    assert settings.watched_files(Path("/somewhere/else")) == (elsewhere,)


def test_upstream_header_fields_locate_each_header_in_its_section() -> None:
    jwt = settings_of(
        {
            "type": "jwt",
            "issuer": "https://idp.example.test",
            "audiences": ["orders"],
            "claim_to_headers": {"sub": "X-User", "cognito:groups": "x-groups"},
        }
    )
    assert jwt.upstream_header_fields() == {
        ("claim_to_headers", "sub"): "x-user",
        ("claim_to_headers", "cognito:groups"): "x-groups",
    }
    sigv4 = settings_of({**SIGV4, "upstream_headers": {"principal_arn": "X-Principal-Arn"}})
    assert sigv4.upstream_header_fields() == {("upstream_headers", "principal_arn"): "x-principal-arn"}
    assert settings_of({"type": "none"}).upstream_header_fields() == {}


async def test_a_route_variant_sets_the_same_upstream_headers(tmp_path: Path) -> None:
    write_files(tmp_path)
    settings = settings_of({**SIGV4, "upstream_headers": {"access_key_id": "x-access-key"}})
    authorizer = build(settings, tmp_path)

    class Route:
        replay_guard = True

    variant = authorizer.for_route(Route())  # type: ignore[arg-type]
    assert variant is not authorizer
    assert variant.upstream_header_names() == settings.upstream_header_names() == frozenset({"x-access-key"})
    await authorizer.stop()


@pytest.mark.parametrize("key", ["route_options", "identity_side"])
def test_the_hooks_are_not_config_keys(key: str) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        settings_of({**SIGV4, key: ["replay_guard"]})


class PluginSettings(AuthorizerSettings):
    type: Literal["plugin-hooks"]


class PluginAuthorizer(Authorizer):
    kind: ClassVar[str] = "plugin-hooks"

    async def authenticate(self, request: Request) -> Principal:
        raise Denied("Nope", "nope", 401)


def test_a_plugin_that_declares_nothing_gets_todays_defaults() -> None:
    settings = PluginSettings(type="plugin-hooks")
    assert PluginAuthorizer.identity_side == "authenticated"  # allowed unless a policy denies
    assert settings.watched_files(Path("/config")) == ()
    assert settings.upstream_header_names() == frozenset()
    assert PluginSettings.route_options == frozenset()
