"""The `sigv4` authorizer end to end in-process: config file -> runtime -> pipeline, and the replay guard
(local, and shared through a real Redis server on loopback)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sigv4_testkit import VECTOR_TIME, credential, self_sign, verifier
from test_sigv4_botocore import AKID, HOST, SECRET, sign

from sidecar.authorizers.base import BuildContext, registry
from sidecar.authorizers.sigv4.authorizer import SigV4Authorizer
from sidecar.authorizers.sigv4.errors import REPLAYED_REQUEST
from sidecar.authorizers.sigv4.replay import LocalReplayGuard, RedisReplayGuard, redis_client
from sidecar.authorizers.sigv4.settings import SigV4Settings, build_sigv4
from sidecar.config import ApiSettings, ConfigError, parse_config
from sidecar.harness.envoy import free_port
from sidecar.pipeline import Pipeline
from sidecar.reasons import Denied
from sidecar.runtime import RuntimeHolder, compile_runtime


def write_credentials(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "credentials.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - access_key_id: {AKID}
                secret_access_key: "{SECRET}"
                principal_arn: arn:aws:iam::123456789012:user/alice
                policies:
                  - Version: "2012-10-17"
                    Statement:
                      - {{Effect: Allow, Action: "execute-api:Invoke", Resource: "*"}}
                      - {{Effect: Deny, Action: "execute-api:Invoke", Resource: "execute-api:/*/DELETE/*"}}
            """
        )
        + extra
    )
    return path


def config_text(authorizer: str) -> str:
    return textwrap.dedent(
        f"""\
        api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
        upstream_headers: {{principal: x-authz-principal}}
        authorizers:
          iam: {authorizer}
        routes:
          - {{match: "ANY /{{proxy+}}", authorizer: iam}}
        """
    )


async def test_config_to_pipeline(tmp_path: Path) -> None:
    write_credentials(tmp_path)
    settings = (
        "{type: sigv4, credentials: {file: credentials.yaml}, "
        "upstream_headers: {access_key_id: x-amz-access-key, principal_arn: x-principal-arn}}"
    )
    config = parse_config(config_text(settings), str(tmp_path / "config.yaml"))
    sigv4_settings = config.authorizers["iam"]
    assert isinstance(sigv4_settings, SigV4Settings)
    assert sigv4_settings.service == "execute-api" and sigv4_settings.clock_skew == 300
    runtime = compile_runtime(config)
    authorizer = runtime.authorizers["iam"]
    assert isinstance(authorizer, SigV4Authorizer)
    assert authorizer.verifier.options.regions == {"us-east-1"}  # from `api.region`
    assert authorizer.verifier.options.normalize_path and authorizer.verifier.options.double_encode
    pipeline = Pipeline(RuntimeHolder(runtime))

    allowed = await pipeline.check(sign("POST", f"https://{HOST}/orders/1?x=y", body=b'{"a": 1}'))
    assert allowed.allowed, allowed
    headers = dict(allowed.all_headers())
    assert headers["x-amz-access-key"] == AKID
    assert headers["x-principal-arn"] == headers["x-authz-principal"] == "arn:aws:iam::123456789012:user/alice"

    explicit_deny = await pipeline.check(sign("DELETE", f"https://{HOST}/orders/1"))
    if explicit_deny.allowed:  # identity policies are applied by the pipeline once the policy stage is wired in
        assert explicit_deny.principal is not None and len(explicit_deny.principal.policies) == 1
    else:
        assert (explicit_deny.status, explicit_deny.reason) == (403, "AccessDenied")

    unsigned = sign("GET", f"https://{HOST}/orders/1")._replace(headers={"host": HOST})
    denied = await pipeline.check(unsigned)
    assert (denied.allowed, denied.status, denied.reason) == (False, 403, "MissingAuthenticationToken")
    assert denied.message == "Missing Authentication Token"

    tampered = sign("GET", f"https://{HOST}/orders/1")
    tampered = tampered._replace(raw_path="/orders/2", path="/orders/2")
    denied = await pipeline.check(tampered)
    assert (denied.status, denied.reason) == (403, "InvalidSignature")


async def test_deny_status_401_carries_the_aws_challenge(tmp_path: Path) -> None:
    write_credentials(tmp_path)
    config = parse_config(
        config_text("{type: sigv4, credentials: {file: credentials.yaml}, deny_status: 401}"),
        str(tmp_path / "config.yaml"),
    )
    pipeline = Pipeline(RuntimeHolder(compile_runtime(config)))
    denied = await pipeline.check(sign("GET", f"https://{HOST}/x")._replace(headers={"host": HOST}))
    assert denied.status == 401
    assert ("www-authenticate", "AWS4-HMAC-SHA256") in denied.headers


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ("{type: sigv4}", "authorizers.iam.credentials"),
        ("{type: sigv4, credentials: {file: c.yaml}, region: us-east-1, regions: [eu-west-1]}", "authorizers.iam"),
        ("{type: sigv4, credentials: {file: c.yaml}, clock_skew: -1}", "authorizers.iam.clock_skew"),
        ("{type: sigv4, credentials: {file: c.yaml}, max_expires: 604801}", "authorizers.iam.max_expires"),
        ("{type: sigv4, credentials: {file: c.yaml}, algorithms: [AWS4-HMAC-SHA1]}", "authorizers.iam.algorithms[0]"),
        ("{type: sigv4, credentials: {file: c.yaml}, normalise_path: true}", "authorizers.iam.normalise_path"),
        ("{type: sigv4, credentials: {file: c.yaml}, deny_status: 400}", "authorizers.iam.deny_status"),
    ],
)
def test_bad_settings_are_config_errors(settings: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(settings), "config.yaml")
    assert any(issue.field == field and issue.line > 0 for issue in info.value.issues), info.value


def test_bad_credentials_file_fails_compile_with_its_location(tmp_path: Path) -> None:
    (tmp_path / "credentials.yaml").write_text("credentials:\n  - access_key_id: AKIAX\n    principal_arn: nope\n")
    config = parse_config(config_text("{type: sigv4, credentials: {file: credentials.yaml}}"), str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError) as info:
        compile_runtime(config)
    assert info.value.issues[0].file == str(tmp_path / "credentials.yaml")
    assert info.value.issues[0].field.startswith("credentials[0]")


def test_s3_defaults_and_registry(tmp_path: Path) -> None:
    write_credentials(tmp_path)
    entry = registry()["sigv4"]
    settings = entry.settings.model_validate(
        {
            "type": "sigv4",
            "service": "s3",
            "regions": ["us-east-1", "eu-west-1"],
            "credentials": {"file": "credentials.yaml"},
        }
    )
    authorizer = entry.build(settings, BuildContext("s3", tmp_path, ApiSettings()))
    assert isinstance(authorizer, SigV4Authorizer)
    options = authorizer.verifier.options
    assert (options.normalize_path, options.double_encode, options.regions) == (
        False,
        False,
        {"us-east-1", "eu-west-1"},
    )


# -- replay guard ---------------------------------------------------------------------------------------------


def test_local_replay_guard_is_bounded_and_expires() -> None:
    guard = LocalReplayGuard(max_entries=10)
    assert guard.check("a", 5, now=100) is True
    assert guard.check("a", 5, now=104) is False
    assert guard.check("a", 5, now=105.5) is True  # expired, so it is fresh again
    for i in range(30):
        assert guard.check(f"k{i}", 1000, now=200) is True
    assert len(guard) <= 10
    assert guard.check("k29", 1000, now=201) is False  # the newest entries are kept


async def test_authorizer_denies_replays_only_when_enabled(tmp_path: Path) -> None:
    write_credentials(tmp_path)
    base = {"type": "sigv4", "service": "service", "credentials": {"file": "credentials.yaml"}}
    ctx = BuildContext("iam", tmp_path, ApiSettings())
    plain = build_sigv4(SigV4Settings.model_validate(base), ctx)
    guarded = build_sigv4(SigV4Settings.model_validate({**base, "replay_guard": True}), ctx)
    request = self_sign("GET", "/", {}, access_key_id=AKID, secret=SECRET)
    for _ in range(3):
        await plain.authenticate(request)
    await guarded.authenticate(request)
    with pytest.raises(Denied) as info:
        await guarded.authenticate(request)
    assert info.value.reason == REPLAYED_REQUEST
    # a later signature of the same request is a new request
    await guarded.authenticate(
        self_sign("GET", "/", {}, access_key_id=AKID, secret=SECRET, at=VECTOR_TIME + 1)._replace(time=VECTOR_TIME + 1)
    )


@pytest.fixture
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required for the shared replay guard test"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 10
        for line in proc.stdout:  # wait for the server to say it is ready (no sleeping)
            if "Ready to accept connections" in line:
                break
            assert time.monotonic() < deadline, "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_redis_replay_guard_is_shared_between_sidecars(redis_url: str) -> None:
    first = RedisReplayGuard(redis_client(redis_url, 1.0))
    second = RedisReplayGuard(redis_client(redis_url, 1.0))  # another sidecar: its own local memory
    try:
        v = verifier([credential()])
        request = self_sign("GET", "/orders", {})
        verified = v.verify(request)
        assert await first.first_use(verified.replay_key, verified.replay_ttl, verified.now) is True
        assert await second.first_use(verified.replay_key, verified.replay_ttl, verified.now) is False
        ttl_ms = await first.client.pttl(first.prefix + verified.replay_key)
        assert 0 < ttl_ms <= verified.replay_ttl * 1000
    finally:
        await first.close()
        await second.close()


async def test_redis_replay_guard_started_inline_reaches_redis(redis_url: str) -> None:
    """The lean gRPC and HTTP listeners start a Check with `coro.send(None)` from a loop callback, outside any
    Task: the guard's SET must still reach Redis (it failed there, so every replica kept its own guard)."""
    import asyncio

    from sidecar.inline import Resume

    first = RedisReplayGuard(redis_client(redis_url, 1.0))
    second = RedisReplayGuard(redis_client(redis_url, 1.0))
    loop = asyncio.get_running_loop()

    async def inline(guard: RedisReplayGuard) -> bool:
        coro = guard.first_use("inline-key", 60, now=0)
        started: asyncio.Future[object] = loop.create_future()

        def start() -> None:  # what HttpAuthzProtocol and LeanGrpcProtocol do
            try:
                started.set_result(coro.send(None))
            except StopIteration as done:
                started.set_exception(AssertionError(f"finished without awaiting Redis: {done.value!r}"))

        loop.call_soon(start)
        return bool(await Resume(coro, await started))

    try:
        assert await inline(first) is True
        assert await inline(second) is False  # another replica: only Redis can know
        assert await first.client.exists(first.prefix + "inline-key") == 1
    finally:
        await first.close()
        await second.close()


async def test_redis_down_degrades_to_the_local_guard() -> None:
    guard = RedisReplayGuard(redis_client(f"redis://127.0.0.1:{free_port()}/0", 0.2))
    try:
        assert await guard.first_use("k", 60, now=0) is True
        assert await guard.first_use("k", 60, now=1) is False
    finally:
        await guard.close()


def route_guard_config(tmp_path: Path, authorizer_guard: bool) -> str:
    return textwrap.dedent(
        f"""\
        api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
        authorizers:
          iam: {{type: sigv4, credentials: {{file: credentials.yaml}}, replay_guard: {str(authorizer_guard).lower()}}}
        routes:
          - {{match: "POST /payments", authorizer: iam, replay_guard: true}}
          - {{match: "POST /refunds", authorizer: iam, replay_guard: false}}
          - {{match: "ANY /{{proxy+}}", authorizer: iam}}
        """
    )


@pytest.mark.parametrize("authorizer_guard", [False, True])
async def test_replay_guard_is_chosen_per_route(tmp_path: Path, authorizer_guard: bool) -> None:
    """A route's `replay_guard` overrides its authorizer's; routes that leave it unset follow the authorizer."""
    write_credentials(tmp_path)
    config = parse_config(route_guard_config(tmp_path, authorizer_guard), str(tmp_path / "config.yaml"))
    runtime = compile_runtime(config)
    pipeline = Pipeline(RuntimeHolder(runtime))
    expected_second = {"/payments": False, "/refunds": True, "/orders": not authorizer_guard}
    for path, second_allowed in expected_second.items():
        request = sign("POST", f"https://{HOST}{path}", body=b"{}")
        first, second = await pipeline.check(request), await pipeline.check(request)
        assert first.allowed, (path, first)
        assert second.allowed is second_allowed, (path, second)
        if not second_allowed:
            assert (second.status, second.reason) == (403, REPLAYED_REQUEST)
    await runtime.stop()


def test_route_replay_guard_on_a_non_sigv4_authorizer_is_a_config_error(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        authorizers:
          open: {type: none}
        routes:
          - {match: "GET /x", authorizer: open}
          - {match: "GET /y", authorizer: open,
             replay_guard: true}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml")
    issue = info.value.issues[0]
    assert (issue.file, issue.field) == ("config.yaml", "routes[1].replay_guard")
    assert issue.line == 6 and "sigv4 routes only" in issue.message


async def test_route_replay_guard_uses_the_authorizers_redis_and_is_closed_with_it(
    tmp_path: Path, redis_url: str
) -> None:
    """The authorizer's own guard is off; a route turns it on: that route's guard is built from the authorizer's
    `replay_redis_url` (shared by every sidecar) and closed when the runtime stops."""
    write_credentials(tmp_path)
    text = textwrap.dedent(
        f"""\
        api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
        authorizers:
          iam: {{type: sigv4, credentials: {{file: credentials.yaml}}, replay_redis_url: "{redis_url}"}}
        routes:
          - {{match: "POST /payments", authorizer: iam, replay_guard: true}}
        """
    )
    config = parse_config(text, str(tmp_path / "config.yaml"))
    first, second = compile_runtime(config), compile_runtime(config)  # two sidecars, one Redis
    route = first.routes.match("POST", "/payments")
    assert route is not None
    guard = route.target.authorizer.replay_guard  # type: ignore[attr-defined]
    assert isinstance(guard, RedisReplayGuard)
    request = sign("POST", f"https://{HOST}/payments", body=b"{}")
    assert (await Pipeline(RuntimeHolder(first)).check(request)).allowed
    replayed = await Pipeline(RuntimeHolder(second)).check(request)
    assert (replayed.allowed, replayed.reason) == (False, REPLAYED_REQUEST)
    closed: list[bool] = []
    original = guard.close

    async def close() -> None:
        closed.append(True)
        await original()

    guard.close = close  # type: ignore[method-assign]
    await first.stop()
    await second.stop()
    assert closed == [True]
