"""The `cognito` authorizer against real Cognito-issued tokens from moto's Cognito on 127.0.0.1.

Keys are fetched over HTTP from moto's `/.well-known/jwks.json` by the real JWKS cache (a `jwks_uri` override,
since moto serves keys from another host than the tokens' `iss`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.authorizers.base import BuildContext
from sidecar.authorizers.jwt import errors as jwterrors
from sidecar.authorizers.jwt.authorizer import CognitoAuthorizer
from sidecar.authorizers.jwt.settings import CognitoSettings, build_cognito
from sidecar.config import ApiSettings
from sidecar.reasons import Denied
from tests.unit.authorizers.jwt.jwt_testkit import request
from tests.unit.authorizers.jwt.moto_cognito import REGION, MotoCognito, Pool


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoCognito]:
    server = MotoCognito().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pool(moto: MotoCognito) -> Pool:
    return moto.pool()


def authorizer(pool: Pool, token_use: tuple[str, ...], client_ids: tuple[str, ...] | None = None) -> CognitoAuthorizer:
    settings = CognitoSettings(
        type="cognito",
        region=REGION,
        user_pool_id=pool.id,
        client_ids=client_ids or (pool.client_id,),
        token_use=token_use,  # type: ignore[arg-type]
        jwks_uri=pool.jwks_uri,
        claim_to_headers={"username": "x-user", "cognito:groups": "x-groups"},
    )
    auth = build_cognito(settings, BuildContext(name="pool", base_dir=Path.cwd(), api=ApiSettings()))
    assert isinstance(auth, CognitoAuthorizer)
    return auth


async def test_access_token_from_moto(pool: Pool) -> None:
    auth = authorizer(pool, ("access",))
    await auth.start()
    try:
        assert auth.is_ready()
        principal = await auth.authenticate(request(pool.access_token))
        assert principal.kind == "cognito"
        assert principal.claims["iss"] == pool.issuer
        assert principal.claims["client_id"] == pool.client_id
        assert principal.context["cognito:groups"] == ("admins",)
        assert principal.context["cognito:username"] == "alice"
        assert dict(principal.upstream_headers) == {"x-user": "alice", "x-groups": "admins"}
        with pytest.raises(Denied) as info:
            await auth.authenticate(request(pool.id_token))
        assert info.value.reason == jwterrors.INVALID_TOKEN_USE
    finally:
        await auth.stop()


async def test_id_token_from_moto(pool: Pool) -> None:
    auth = authorizer(pool, ("id",))
    await auth.start()
    try:
        principal = await auth.authenticate(request(pool.id_token))
        assert principal.claims["aud"] == pool.client_id
        assert principal.context["cognito:username"] == "alice"
        assert principal.context["cognito:groups"] == ("admins",)
    finally:
        await auth.stop()


async def test_tokens_for_another_app_client_are_refused(pool: Pool) -> None:
    auth = authorizer(pool, ("access", "id"), client_ids=(pool.other_client_id,))
    await auth.start()
    try:
        for token in (pool.access_token, pool.id_token):
            with pytest.raises(Denied) as info:
                await auth.authenticate(request(token))
            assert info.value.reason == jwterrors.INVALID_AUDIENCE
    finally:
        await auth.stop()


async def test_another_pool_is_another_issuer(moto: MotoCognito, pool: Pool) -> None:
    other = moto.pool(username="bob")
    auth = authorizer(pool, ("access",))
    await auth.start()
    try:
        with pytest.raises(Denied) as info:
            await auth.authenticate(request(other.access_token))
        assert info.value.reason == jwterrors.INVALID_ISSUER  # moto signs every pool with one key: iss decides
    finally:
        await auth.stop()
