"""Every reload says what it did, through the real admin listener (/readyz, /metrics on 127.0.0.1) and the log:
the config's (`ok`, `unchanged` for a SIGHUP with the same file or a comment-only edit, `rejected` with the
file:line of a bad edit, cleared by the next good reload) and a SigV4 credentials file's, which its store
reloads on its own: a broken one is counted and shown with its file:line while the old credentials keep
verifying real botocore-signed requests, and fixing the file clears it.

Reloads are driven directly (`Sidecar.reload`, `FileCredentialStore.reload_if_changed`): no watcher timing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.authorizers.sigv4.authorizer import SigV4Authorizer
from sidecar.authorizers.sigv4.credentials import FileCredentialStore
from sidecar.harness.envoy import free_port
from sidecar.serve.server import Sidecar, start_sidecar
from tests.unit.serve.test_reload_race import readyz, serving
from tests.unit.serve.test_supervisor import send_check
from tests.unit.serve.test_workers_replay_guard import SECRET, credentials, signed

BAD_YAML = "decision_log: enabled: true\n"
"""Invalid YAML (a mapping value where none may start), reported at its own line."""


def config_text(tmp_path: Path, grpc_port: int, admin_port: int, open_route: str = "open") -> str:
    """`GET /open` goes to `open_route`; everything else needs a SigV4 signature from `credentials.yaml`."""
    return f"""\
listen: {{grpc: "127.0.0.1:{grpc_port}", admin: "127.0.0.1:{admin_port}"}}
server: {{watch_config: false, grace_period: 2}}
api: {{id: a1b2c3d4e5, stage: prod, account: "123456789012", region: us-east-1}}
authorizers:
  open: {{type: none}}
  closed: {{type: deny}}
  corp:
    type: sigv4
    credentials: {{file: {credentials(tmp_path)}, reload_interval: 0}}
routes:
  - {{match: "GET /open", authorizer: {open_route}}}
  - {{match: "ANY /{{proxy+}}", authorizer: corp}}
"""


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, free_port(), free_port()))
    async with serving(path) as running:
        yield running


def admin_port(sidecar: Sidecar) -> int:
    assert sidecar.admin is not None
    return sidecar.admin.port


def config_path(sidecar: Sidecar) -> Path:
    assert sidecar.source.path is not None
    return sidecar.source.path


async def reload_counts(port: int) -> dict[tuple[str, str], float]:
    """`authz_config_reloads_total` by (source, outcome), as a scrape of `/metrics` reads it."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "authz_config_reloads")
    return {(s.labels["source"], s.labels["outcome"]): s.value for s in family.samples if s.name.endswith("_total")}


async def ready_state(port: int) -> dict[str, Any]:
    """/readyz's JSON body."""
    body: dict[str, Any] = await readyz(port)
    return body


def counted(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """What changed between two scrapes (counters are process-wide; other tests count too)."""
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def rewrite(path: Path, text: str) -> None:
    """Write `text` and move the mtime a second on: the credential store sees a change by stat, and two writes of
    one size within one clock tick would look alike."""
    later = path.stat().st_mtime_ns + 1_000_000_000
    path.write_text(text)
    os.utime(path, ns=(later, later))


def store_of(sidecar: Sidecar) -> FileCredentialStore:
    authorizer = sidecar.runtime.authorizers["corp"]
    assert isinstance(authorizer, SigV4Authorizer)
    store = authorizer.store
    assert isinstance(store, FileCredentialStore)
    return store


async def verified_as(sidecar: Sidecar) -> str:
    """Send a botocore-signed request over gRPC; return the principal the sidecar passes upstream (it must allow)."""
    response = await asyncio.to_thread(send_check, sidecar.grpc_port, signed("/orders"))
    assert response.status.code == 0, response
    headers: dict[str, str] = {h.header.key: h.header.value for h in response.ok_response.headers}
    return headers["x-authz-principal"]


async def config_retried(sidecar: Sidecar) -> None:
    """Wake the readiness watcher (which retries a rejected config reload) and wait, bounded, for the retry."""
    for _ in range(100):
        last = sidecar.state.config_reloads.last
        if last is not None and last.outcome != "rejected":
            return
        sidecar._readiness_changed.set()
        await asyncio.sleep(0.05)  # bounded polling for a condition, not a guess at how long it takes
    raise AssertionError("the rejected config reload was not retried")


async def test_initial_state_reports_no_reload(sidecar: Sidecar) -> None:
    body = await ready_state(admin_port(sidecar))
    assert body["ready"] is True
    assert body["last_reload"] is None
    assert body["reload_errors"] == {} and body["authorizer_reloads"] == {}
    assert "last_reload_error" not in body


async def test_config_reloads_ok_unchanged_rejected_and_recovered(
    sidecar: Sidecar, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, port = config_path(sidecar), admin_port(sidecar)
    caplog.set_level(logging.INFO, logger="sidecar.serve.server")
    serving = sidecar.runtime.version
    before = await reload_counts(port)

    assert await sidecar.reload("SIGHUP") is True  # the same file
    body = await ready_state(port)
    assert body["last_reload"] == {
        "outcome": "unchanged",
        "why": "SIGHUP",
        "at": body["last_reload"]["at"],
        "version": serving,
    }
    assert str(body["last_reload"]["at"]).endswith("Z")
    assert f"reload (SIGHUP): unchanged, still serving config {serving}" in caplog.text

    path.write_text(path.read_text() + "# only a comment\n")
    assert await sidecar.reload("file change") is True
    body = await ready_state(port)
    assert body["last_reload"]["outcome"] == "unchanged" and body["last_reload"]["why"] == "file change"
    assert body["config_version"] == serving
    assert counted(before, await reload_counts(port)) == {("config", "unchanged"): 2}

    path.write_text(config_text(tmp_path, sidecar.grpc_port, port, open_route="closed"))
    assert await sidecar.reload("SIGHUP") is True
    body = await ready_state(port)
    changed = sidecar.runtime.version
    assert changed != serving and body["config_version"] == changed
    assert body["last_reload"]["outcome"] == "ok" and body["last_reload"]["version"] == changed
    assert f"reload (SIGHUP): now serving config {changed}" in caplog.text

    good = path.read_text()
    path.write_text(good + BAD_YAML)
    bad_line = len(good.splitlines()) + 1
    assert await sidecar.reload("file change") is False
    body = await ready_state(port)
    assert body["ready"] is True and body["config_version"] == changed  # the old config serves on
    assert body["last_reload"]["outcome"] == "rejected" and body["last_reload"]["version"] == changed
    error = body["reload_errors"]["config"]
    assert error.startswith(f"{path}:{bad_line}:") and "invalid YAML" in error
    assert body["last_reload_error"] == error

    path.write_text(config_text(tmp_path, sidecar.grpc_port, port))  # a good config again: recovery
    assert await sidecar.reload("SIGHUP") is True
    body = await ready_state(port)
    assert body["last_reload"]["outcome"] == "ok" and body["reload_errors"] == {}
    assert "last_reload_error" not in body, json.dumps(body)
    assert counted(before, await reload_counts(port)) == {
        ("config", "unchanged"): 2,
        ("config", "ok"): 2,
        ("config", "rejected"): 1,
    }


async def test_a_broken_credentials_file_is_reported_until_fixed_and_the_old_keys_serve(
    sidecar: Sidecar, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port, store = admin_port(sidecar), store_of(sidecar)
    caplog.set_level(logging.INFO, logger="sidecar.authorizers.sigv4.credentials")
    file = store.path
    good = file.read_text()
    alice = "arn:aws:iam::123456789012:user/alice"
    assert await verified_as(sidecar) == alice
    before, serving = await reload_counts(port), store.version

    arn_line = next(i for i, line in enumerate(good.splitlines(), 1) if "principal_arn" in line)
    rewrite(file, good.replace(alice, "alice"))  # not an ARN
    assert store.reload_if_changed() is False
    body = await ready_state(port)
    error = body["reload_errors"]["credentials:corp"]
    assert error.startswith(f"{file}:{arn_line}:") and "credentials[0].principal_arn" in error
    assert body["authorizer_reloads"]["credentials:corp"]["outcome"] == "rejected"
    assert body["authorizer_reloads"]["credentials:corp"]["version"] == serving
    assert body["ready"] is True and "last_reload_error" not in body  # the config itself is fine
    assert SECRET not in json.dumps(body) and SECRET not in caplog.text
    assert counted(before, await reload_counts(port)) == {("credentials:corp", "rejected"): 1}
    assert await verified_as(sidecar) == alice  # the last good credentials keep verifying

    # A config reload builds the authorizer anew, so it reads the broken file too and is rejected with its error.
    assert await sidecar.reload("SIGHUP") is False
    body = await ready_state(port)
    assert set(body["reload_errors"]) == {"config", "credentials:corp"}
    assert f"{file}:{arn_line}:" in body["reload_errors"]["config"]

    rewrite(file, good + "# fixed\n")  # fixed: what it says is what serves
    assert store.reload_if_changed() is False
    assert f"(file change): unchanged, still serving credentials {serving}" in caplog.text
    # The config reload failed on this file: the server retries it once the file loads, clearing its error too.
    await config_retried(sidecar)
    body = await ready_state(port)
    assert body["reload_errors"] == {} and "last_reload_error" not in body
    assert body["last_reload"]["why"] == "authorizer files recovered"
    assert body["authorizer_reloads"]["credentials:corp"]["outcome"] == "unchanged"

    rewrite(file, good.replace("user/alice", "user/bob"))
    assert store.reload_if_changed() is True
    body = await ready_state(port)
    assert body["authorizer_reloads"]["credentials:corp"]["outcome"] == "ok"
    assert body["authorizer_reloads"]["credentials:corp"]["version"] == store.version != serving
    assert await verified_as(sidecar) == "arn:aws:iam::123456789012:user/bob"
    assert counted(before, await reload_counts(port)) == {
        ("credentials:corp", "rejected"): 1,
        ("credentials:corp", "unchanged"): 1,
        ("credentials:corp", "ok"): 1,
        ("config", "rejected"): 1,
        ("config", "unchanged"): 1,
    }


async def test_a_config_reload_that_swaps_starts_the_credentials_afresh(sidecar: Sidecar, tmp_path: Path) -> None:
    """The new config's store has loaded the file itself: the old store's problem goes with the old config."""
    port, store = admin_port(sidecar), store_of(sidecar)
    good = store.path.read_text()
    rewrite(store.path, good.replace("arn:aws:iam::123456789012:user/alice", "alice"))
    assert store.reload_if_changed() is False
    assert "credentials:corp" in (await ready_state(port))["reload_errors"]
    rewrite(store.path, good)
    config_path(sidecar).write_text(config_text(tmp_path, sidecar.grpc_port, port, open_route="closed"))
    assert await sidecar.reload("SIGHUP") is True
    assert store_of(sidecar) is not store
    body = await ready_state(port)
    assert body["reload_errors"] == {} and body["authorizer_reloads"] == {}


async def test_a_sighup_reloads_a_changed_credentials_file_the_store_never_polls(sidecar: Sidecar) -> None:
    """`reload_interval: 0`: only a SIGHUP makes the store look. The config is unchanged, the credentials reload."""
    port, store = admin_port(sidecar), store_of(sidecar)
    alice, bob = "arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/bob"
    assert await verified_as(sidecar) == alice
    before = await reload_counts(port)
    rewrite(store.path, store.path.read_text().replace(alice, bob))
    assert await sidecar.reload("SIGHUP") is True
    assert await verified_as(sidecar) == bob
    body = await ready_state(port)
    assert body["last_reload"]["outcome"] == "unchanged"
    assert body["authorizer_reloads"]["credentials:corp"]["outcome"] == "ok"
    assert body["authorizer_reloads"]["credentials:corp"]["why"] == "SIGHUP"
    assert counted(before, await reload_counts(port)) == {("config", "unchanged"): 1, ("credentials:corp", "ok"): 1}


async def test_serve_logs_what_validate_warns_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A `none` route under a resource policy that allows nothing for it: served, and said at start-up."""
    (tmp_path / "policy.json").write_text(
        json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "execute-api:Invoke",
                        "Resource": "execute-api:/*/GET/a",
                    }
                ],
            }
        )
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        f'listen: {{grpc: "127.0.0.1:{free_port()}", admin: "127.0.0.1:{free_port()}"}}\n'
        "server: {watch_config: false, grace_period: 1}\nresource_policy: policy.json\n"
        "authorizers: {open: {type: none}}\n"
        'routes: [{match: "GET /a", authorizer: open}, {match: "GET /b", authorizer: open}]\n'
    )
    caplog.set_level(logging.WARNING, logger="sidecar.serve.server")
    started = await start_sidecar(path)
    assert started is not None
    try:
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1, warned
        assert "routes[1]" in warned[0] and "never allowed" in warned[0]
    finally:
        await started.drain_and_stop()


async def test_an_edit_then_sighup_is_one_reload(sidecar: Sidecar, tmp_path: Path) -> None:
    """With the file watch on, an edit followed by SIGHUP must not reload twice: the watcher counts what the
    SIGHUP reload read as seen (and a later edit still shows)."""
    path = config_path(sidecar)
    path.write_text(config_text(tmp_path, sidecar.grpc_port, admin_port(sidecar), open_route="closed"))
    assert await sidecar.reload("SIGHUP") is True
    assert sidecar.source.changed_on_disk(sidecar.runtime.watched) is False
    rewrite(path, path.read_text() + "# later\n")
    assert sidecar.source.changed_on_disk(sidecar.runtime.watched) is True
