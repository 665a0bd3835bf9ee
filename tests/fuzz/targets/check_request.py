"""CheckRequest protobuf decoding and the ext_authz adapter, through the whole pipeline, as the lean gRPC engine calls
it (`AuthorizationService.check_wire`: the message's bytes in, the CheckResponse's bytes out).

Seeds: serialized CheckRequests carrying this run's credentials (JWTs with and without the scope, botocore-signed
and presigned SigV4 requests stamped at their signing time), open and policy-denied routes, odd methods and paths.
Oracle: bytes that are not a CheckRequest fail with the documented gRPC INTERNAL `GrpcError`, nothing else; every
answer parses as a CheckResponse; the decision the pipeline made has a documented reason and status and allows a
protected route only for a genuine credential (`World.judge`: the minted token's signed part, or botocore's own
signature for the request); the response says what the decision said (OK iff allowed, the deny's reason in its
JSON body, no header that could split a response); a request the adapter refused is a 400 MalformedRequest.
"""

from __future__ import annotations

import json

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from sidecar import reasons
from sidecar.request import Decision, Request
from sidecar.transports.ext_authz import AuthorizationService
from sidecar.transports.status import GRPC_INTERNAL, GrpcError

from ..harness import OneInput, Target
from ..world import HOST, SIGNED_AT, World, shared_world


class Recording:
    """The pipeline's `check`, remembering what it was asked and what it answered (the oracle needs both)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen: list[tuple[Request, Decision]] = []

    async def check(self, request: Request) -> Decision:
        decision = await self.world.pipeline.check(request)
        self.seen.append((request, decision))
        return decision


def judge_response(world: World, wire: bytes, seen: list[tuple[Request, Decision]]) -> None:
    """The adapter's answer against the decision behind it (shared with the lean gRPC target)."""
    response = CheckResponse.FromString(wire)
    if not seen:
        denied = response.denied_response
        assert response.status.code != 0 and denied.status.code == 400, response
        assert json.loads(denied.body)["reason"] == reasons.MALFORMED_REQUEST
        return
    assert len(seen) == 1
    request, decision = seen[0]
    world.judge(request, decision)
    if decision.allowed:
        assert response.status.code == 0 and response.HasField("ok_response"), response
        for option in response.ok_response.headers:
            assert not set(option.header.key + option.header.value) & set("\r\n\0"), option
        return
    assert response.status.code != 0 and response.HasField("denied_response"), response
    body = json.loads(response.denied_response.body)
    assert body["reason"] == decision.reason or body["reason"] == reasons.INTERNAL_ERROR, body
    assert body["reason"] != reasons.INTERNAL_ERROR, "a decision the adapter could not encode"


def prepare() -> OneInput:
    world = shared_world()
    recording = Recording(world)
    service = AuthorizationService(recording.check)

    def one_input(data: bytes) -> None:
        recording.seen.clear()
        try:
            wire = world.loop.run(service.check_wire(data))
        except GrpcError as error:
            assert not recording.seen and error.code == GRPC_INTERNAL, error
            return
        judge_response(world, wire, recording.seen)

    return one_input


def check_request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", source: str = "127.0.0.1"
) -> CheckRequest:
    """A CheckRequest as Envoy sends one (`:authority`, stamped at the world's signing time)."""
    check = CheckRequest()
    request = check.attributes.request
    request.time.seconds = int(SIGNED_AT)
    http = request.http
    http.method, http.path, http.raw_body = method, path, body
    http.headers.update({":authority": HOST, **{k: v for k, v in headers.items() if k != "host"}})
    check.attributes.source.address.socket_address.address = source
    check.attributes.source.address.socket_address.port_value = 40000
    return check


def seed_requests(world: World) -> list[CheckRequest]:
    """The CheckRequests every CheckRequest-shaped target starts from (shared with the lean gRPC target)."""
    found = [check_request("GET", "/jwt/orders", {"authorization": "Bearer " + t}) for t in world.tokens]
    found += [
        check_request("GET", "/jwt/orders", {"authorization": "Bearer " + world.unscoped}),
        check_request("GET", "/jwt/orders", {"authorization": "Bearer " + world.expired}),
    ]
    found += [check_request(s.method, s.path, dict(s.headers), s.body) for s in world.signed]
    found += [check_request("GET", path, {}) for path in world.presigned]
    found += [
        check_request("GET", "/open/x", {"x-forwarded-for": "10.0.0.1"}),
        check_request("POST", "/open/private/x", {}, b"hello", source="10.1.2.3"),
        check_request("get", "/open/x", {}),
        check_request("GET", "*", {}),
        check_request("BREW", "/nowhere", {"cookie": "a=b"}),
    ]
    return found


def seeds() -> list[bytes]:
    return [check.SerializeToString() for check in seed_requests(shared_world())] + [b"", b"\x0a\x00", b"\xff"]


TARGET = Target(
    name="check_request",
    summary=(
        "CheckRequest protobuf decoding and the ext_authz adapter through the pipeline (check_wire, as the lean "
        "engine calls it); oracle: undecodable bytes are gRPC INTERNAL, every decision has a documented reason "
        "and status, an allow on a protected route only for a genuine credential, the CheckResponse says what "
        "the decision said, adapter refusals are 400 MalformedRequest"
    ),
    prepare=prepare,
    seeds=seeds,
)
