"""A key file and a config for the usage report's tests (`authz-sidecar usage`, the admin endpoint's `/usage`):
a key in a plan with a quota and an offset, one in a plan without a quota, one in no plan, a disabled one."""

from __future__ import annotations

from pathlib import Path

from sidecar.limits.apikeys import digest_of

GOLD = "gold-usage-key-value-0123456789abcdef"
BRONZE = "bronze-usage-key-value-0123456789ab"
FREE = "free-usage-key-value-0123456789abcd"
LOOSE = "loose-usage-key-value-0123456789abc"
OFF = "off-usage-key-value-0123456789abcdef"
VALUES = (GOLD, BRONZE, FREE, LOOSE, OFF)

GOLD_LIMIT, GOLD_OFFSET = 10, 3
"""gold: 10 a day, 3 of them taken off in a key's first period (the test keys are always in their first)."""
BRONZE_LIMIT = 5


def key_file(directory: Path) -> Path:
    """`api-keys.yaml` in `directory` (k-gold: gold, k-bronze: bronze, k-free: a plan without a quota, k-loose:
    no plan, k-off: gold, disabled)."""
    entries = [
        ("k-gold", GOLD, "gold", True),
        ("k-bronze", BRONZE, "bronze", True),
        ("k-free", FREE, "free", True),
        ("k-loose", LOOSE, None, True),
        ("k-off", OFF, "gold", False),
    ]
    lines = []
    for key_id, value, plan, enabled in entries:
        lines.append(f"- id: {key_id}\n  name: {key_id}\n  sha256: {digest_of(value)}")
        lines.append(f"  enabled: {str(enabled).lower()}")
        if plan:
            lines.append(f"  plan: {plan}")
    path = directory / "api-keys.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def config_text(keys: Path, redis_url: str | None = None, listen: str = "") -> str:
    """A config whose `ANY /orders/{proxy+}` requires an API key; counting in Redis with `redis_url`."""
    redis = f'redis: {{default: {{url: "{redis_url}", timeout_ms: 1000}}}}\n' if redis_url else ""
    return f"""\
{listen}{redis}api: {{id: a1b2c3d4e5, stage: prod, account: '123456789012', region: us-east-1}}
decision_log: {{enabled: false}}
authorizers:
  open: {{type: none}}
api_keys: {{file: {keys}}}
usage_plans:
  gold:
    throttle: {{rate: 100, burst: 100}}
    quota: {{limit: {GOLD_LIMIT}, period: DAY, offset: {GOLD_OFFSET}}}
  bronze:
    quota: {{limit: {BRONZE_LIMIT}, period: WEEK}}
  free:
    throttle: {{rate: 100, burst: 100}}
routes:
  - {{match: "ANY /orders/{{proxy+}}", authorizer: open, api_key_required: true}}
"""
