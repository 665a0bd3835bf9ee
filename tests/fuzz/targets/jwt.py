"""JWT/JWS parsing and claim checks, differential against this run's own issuer (real RSA, EC and Ed25519 keys).

The input is an `Authorization` header value sent to the JWT route (`/jwt/`, scope `orders.read`), or, after a
`cookie`/`query` first byte, the same text in another place no source reads. Seeds: tokens minted at start (valid,
lacking the scope, expired), hand-assembled ones (`alg: none`, `crit`, duplicate keys, huge numbers), and the
RFC 7520 JWS examples. Oracle: a documented reason and status on every deny; an allow only when the token's signed
part (header.payload) is byte-identical to one minted with the scope, and then with the principal it names.
"""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.request import Request
from tests.unit.authorizers.jwt.jwt_testkit import b64, unsigned

from ..harness import OneInput, Target, text
from ..world import HOST, SIGNED_AT, shared_world

DATA = Path(__file__).resolve().parents[2] / "data" / "jose"


def _request(data: bytes) -> Request:
    headers = {"host": HOST}
    path = "/jwt/orders/1"
    if data[:1] == b"c":
        headers["cookie"] = "token=" + text(data[1:])
    elif data[:1] == b"q":
        path += "?access_token=" + text(data[1:]).replace("#", "%23")
    else:
        headers["authorization"] = text(data)
    return Request(method="GET", raw_path=path, path=path.partition("?")[0], headers=headers, host=HOST, time=SIGNED_AT)


def prepare() -> OneInput:
    world = shared_world()

    def one_input(data: bytes) -> None:
        request = _request(data)
        decision = world.loop.run(world.pipeline.check(request))
        world.judge(request, decision)

    return one_input


def _vectors() -> list[bytes]:
    """Compact JWS serializations from the vectors in tests/data/jose (a few, small)."""
    found: list[bytes] = []
    for path in sorted((DATA / "rfc7520").rglob("*.json"))[:40]:
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        compact = doc.get("output", {}).get("compact") if isinstance(doc, dict) else None
        if isinstance(compact, str) and len(compact) < 3000:
            found.append(b"Bearer " + compact.encode())
    return found[:8]


def seeds() -> list[bytes]:
    world = shared_world()
    header = {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}
    claims = world.issuer.claims()
    hand = [
        unsigned({"alg": "none"}, claims),
        unsigned({**header, "crit": ["exp"]}, claims, b"x" * 256),
        unsigned(header, {**claims, "exp": 10**400}, b"x"),
        unsigned({**header, "jku": "http://127.0.0.1/keys"}, claims),
        b64('{"alg":"ES256","alg":"none"}') + "." + b64(json.dumps(claims)) + ".",
        "a.b.c.d.e",
    ]
    tokens = [*world.tokens, world.unscoped, world.expired, *hand]
    return [b"Bearer " + t.encode() for t in tokens] + [b"c" + world.tokens[0].encode(), b"bearer  x", *_vectors()]


TARGET = Target(
    name="jwt",
    summary=(
        "JWT/JWS parsing, signature and claim checks through the pipeline's JWT route (RS256/ES256/EdDSA keys "
        "minted per run); oracle: documented reasons and statuses, an allow only for a token whose signed part "
        "is byte-identical to one minted with the route's scope, with that token's principal"
    ),
    prepare=prepare,
    seeds=seeds,
)
