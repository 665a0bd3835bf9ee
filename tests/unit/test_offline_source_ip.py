"""`check --http` decides `aws:SourceIp` as the shipped Envoy would: it appends its peer to X-Forwarded-For."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.config import parse_config
from sidecar.offline import evaluate, parse_http_request
from sidecar.runtime import compile_runtime

CONFIG = """\
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
policy: {{trusted_proxy_hops: 1}}
resource_policy: {policy}
authorizers:
  open: {{type: none}}
routes:
  - {{match: "ANY /{{proxy+}}", authorizer: open}}
"""
ARN = "arn:aws:execute-api:us-east-1:123456789012:a1b2c3d4e5/prod"


def config(tmp_path: Path, extra: str = "") -> str:
    policy = tmp_path / "resource.json"
    statements = [
        {"Effect": "Allow", "Principal": "*", "Action": "execute-api:Invoke", "Resource": f"{ARN}/*"},
        {
            "Effect": "Deny",
            "Principal": "*",
            "Action": "execute-api:Invoke",
            "Resource": f"{ARN}/*",
            "Condition": {"IpAddress": {"aws:SourceIp": "203.0.113.9/32"}},
        },
    ]
    policy.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return CONFIG.format(policy=policy) + extra


async def test_check_http_reads_the_balancers_entry_like_envoy(tmp_path: Path) -> None:
    cfg = parse_config(config(tmp_path), str(tmp_path / "c.yaml"))
    # One trusted balancer (on 127.0.0.1, Envoy's peer, the default) wrote the client's address; the client forged
    # the left entry.
    raw = b"GET /x HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n\r\n"
    denied = await evaluate(cfg, parse_http_request(raw))
    assert not denied.decision.allowed
    raw = b"GET /x HTTP/1.1\r\nHost: api\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.1\r\n\r\n"
    allowed = await evaluate(cfg, parse_http_request(raw))
    assert allowed.decision.allowed  # the forged entry is not the balancer's


def test_http_mode_flavors_say_whether_their_proxy_appends(tmp_path: Path) -> None:
    for flavor, appends in (("envoy", True), ("traefik", True), ("nginx", False)):
        text = config(tmp_path, f"http: {{flavor: {flavor}}}\n")
        runtime = compile_runtime(parse_config(text, str(tmp_path / "c.yaml")))
        assert runtime.context_settings.http_proxy_appends is appends, flavor
