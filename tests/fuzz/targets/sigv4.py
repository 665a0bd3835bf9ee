"""SigV4/SigV4A: the Authorization header, the presigned query and canonicalization, differential against botocore.

The input is a request in HTTP/1.1's text shape (`METHOD /path?query` line, `name: value` lines, a blank line,
the body), read leniently by `parse_request` below and sent to the SigV4 route (`/iam/`) at the time the world's
signatures were made, so they never go stale however long the run. Seeds: requests botocore signed at start
(header and presigned, with a session-less credential of the world's file), the AWS signing test suite's v4 and
v4a requests (tests/data/sigv4, another account: refused) and hand-made damaged ones. Oracle: a documented reason
and status on every deny; an allow only for a request equal to one botocore signed (method, path and query, body,
every signed header), with that credential's principal.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.request import Request

from ..harness import OneInput, Target, text
from ..world import AKID, HOST, SIGNED_AT, Signed, shared_world

SUITE = Path(__file__).resolve().parents[2] / "data" / "sigv4" / "aws-signing-test-suite"


def parse_request(data: bytes, at: float) -> Request:
    """The request `data` spells (never fails: a missing part is empty; repeated headers join with ",")."""
    head, _, body = text(data).replace("\r\n", "\n").partition("\n\n")
    first, _, rest = head.partition("\n")
    method, _, target = first.partition(" ")
    target = target.removesuffix(" HTTP/1.1")
    headers: dict[str, str] = {}
    for line in rest.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return Request(
        method=method,
        raw_path=target,
        path=target.partition("?")[0],
        headers=headers,
        host=headers.get("host", ""),
        body=body.encode("utf-8", "surrogateescape"),
        source_address="127.0.0.1",
        time=at,
    )


def spell(signed: Signed) -> bytes:
    """A signed request in the input's shape."""
    lines = [f"{signed.method} {signed.path}", *(f"{k}: {v}" for k, v in signed.headers.items()), "", ""]
    return "\n".join(lines).encode() + signed.body


def prepare() -> OneInput:
    world = shared_world()

    def one_input(data: bytes) -> None:
        request = parse_request(data, SIGNED_AT)
        decision = world.loop.run(world.pipeline.check(request))
        world.judge(request, decision)

    return one_input


def _suite() -> list[bytes]:
    files = (
        sorted(SUITE.glob("v4/*/header-signed-request.txt"))[:12]
        + sorted(SUITE.glob("v4/*/query-signed-request.txt"))[:4]
    )
    files += sorted(SUITE.glob("v4a/*/header-signed-request.txt"))[:4]
    found = []
    for path in files:
        data = path.read_bytes()
        first, sep, rest = data.partition(b" ")
        found.append(first + sep + b"/iam" + rest if rest.startswith(b"/") else data)
    return found


def seeds() -> list[bytes]:
    world = shared_world()
    good = [spell(signed) for signed in world.signed]
    good += [f"GET {path}\nhost: {HOST}\n\n".encode() for path in world.presigned]
    auth = world.signed[0].headers["authorization"]
    damaged = [
        good[0].replace(b"aws4_request", b"aws4_requesT"),
        good[0].replace(auth.encode(), auth.replace("SignedHeaders=", "SignedHeaders=content-type;").encode()),
        good[0].replace(b"x-amz-date: ", b"x-amz-date: 1"),
        b"GET /iam/x\nauthorization: AWS4-ECDSA-P256-SHA256 Credential=AKID/20260101/execute-api/aws4_request, "
        b"SignedHeaders=host;x-amz-date;x-amz-region-set, Signature=3045022100\nx-amz-region-set: *\n\n",
        b"GET /iam/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=" + AKID.encode() + b"%2F20260101\n\n",
    ]
    return good + damaged + _suite()


TARGET = Target(
    name="sigv4",
    summary=(
        "SigV4/SigV4A Authorization headers, presigned queries and canonicalization through the pipeline's SigV4 "
        "route; oracle: documented reasons and statuses, an allow only for a request equal (method, path and "
        "query, body, signed headers) to one botocore signed, with that credential's principal"
    ),
    prepare=prepare,
    seeds=seeds,
)
