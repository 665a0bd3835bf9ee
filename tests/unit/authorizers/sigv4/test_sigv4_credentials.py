"""The credential file: every field, every mistake reported with file/line/field (never the secret), reloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sigv4_testkit import credential

from sidecar.authorizers.sigv4.credentials import (
    CredentialSet,
    FileCredentialStore,
    load_credentials_file,
    principal_details,
)
from sidecar.config import ApiSettings, ConfigError
from sidecar.policy import CompiledPolicy

SECRET = "s3cr3t/Value+ThatMustNeverLeak"
S = f'    secret_access_key: "{SECRET}"\n'
A = "    principal_arn: arn:aws:iam::123456789012:user/a\n"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "execute-api:/*/GET/orders/*"}],
}


def write(tmp_path: Path, text: str, name: str = "credentials.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    monkeypatch.setenv("BOB_SECRET", SECRET)
    path = write(
        tmp_path,
        f"""
credentials:
  - access_key_id: AKIAALICE
    secret_access_key: "{SECRET}"
    principal_arn: arn:aws:iam::123456789012:user/team/alice
    policies:
      - {json.dumps(POLICY)}
      - policy.json
  - access_key_id: AKIABOB
    secret_access_key_env: BOB_SECRET
    principal_arn: arn:aws:iam::123456789012:root
    enabled: false
  - access_key_id: ASIATEMP
    secret_access_key_file: secret.txt
    session_token: tok
    principal_arn: arn:aws:sts::210987654321:assumed-role/Deployer/ci-run-7
    expires: 2027-01-01T00:00:00Z
    user_id: AROAEXAMPLE:ci-run-7
""",
    )
    loaded = load_credentials_file(path, ApiSettings(id="a1b2c3d4e5", account="123456789012"))
    alice, bob, temp = (loaded.credentials[k] for k in ("AKIAALICE", "AKIABOB", "ASIATEMP"))
    assert alice.secret_access_key == SECRET and alice.enabled and not alice.is_temporary
    assert (alice.account, alice.principal_type, alice.username) == ("123456789012", "User", "alice")
    assert len(alice.policies) == 2 and all(isinstance(p, CompiledPolicy) for p in alice.policies)
    assert bob.secret_access_key == SECRET and not bob.enabled and bob.principal_type == "Account"
    assert temp.secret_access_key == SECRET and temp.session_token == "tok" and temp.is_temporary
    assert temp.expires_at == 1798761600.0
    assert (temp.account, temp.principal_type, temp.user_id) == ("210987654321", "AssumedRole", "AROAEXAMPLE:ci-run-7")
    assert SECRET not in repr(alice) and "tok" not in repr(temp)
    assert set(loaded.watched) >= {
        path.resolve(),
        (tmp_path / "secret.txt").resolve(),
        (tmp_path / "policy.json").resolve(),
    }


def test_json_file(tmp_path: Path) -> None:
    doc = {
        "credentials": [
            {
                "access_key_id": "AKIAJSON",
                "secret_access_key": SECRET,
                "principal_arn": "arn:aws:iam::123456789012:user/json",
            }
        ]
    }
    path = write(tmp_path, json.dumps(doc, indent=2), "credentials.json")
    assert load_credentials_file(path).credentials["AKIAJSON"].username == "json"


@pytest.mark.parametrize(
    ("entry", "field", "line"),
    [
        ("    principal_arn: arn:aws:iam::123456789012:user/a\n", "credentials[0]", 2),
        (
            S + "    secret_access_key_env: X\n" + A,
            "credentials[0].secret_access_key_env",
            4,
        ),
        (
            "    secret_access_key_env: SIGV4_TEST_UNSET_VAR\n    principal_arn: arn:aws:iam::123456789012:user/a\n",
            "credentials[0].secret_access_key_env",
            3,
        ),
        (
            "    secret_access_key_file: missing.txt\n    principal_arn: arn:aws:iam::123456789012:user/a\n",
            "credentials[0].secret_access_key_file",
            3,
        ),
        (f'    secret_access_key: "{SECRET}"\n    principal_arn: alice\n', "credentials[0].principal_arn", 4),
        (
            S + A + "    colour: red\n",
            "credentials[0].colour",
            5,
        ),
        (
            S + A + "    expires: soon\n",
            "credentials[0].expires",
            5,
        ),
        (
            S + A + "    policies: [nope.json]\n",
            "credentials[0].policies[0]",
            5,
        ),
        (
            f'    secret_access_key: "{SECRET}"\n    principal_arn: arn:aws:iam::123456789012:user/a\n'
            '    policies: [{Version: "2012-10-17", Statement: [{Effect: Maybe}]}]\n',
            "credentials[0].policies[0].Statement[0]",
            5,
        ),
        (
            f'    secret_access_key: "{SECRET}"\n    principal_arn: "arn:aws:iam::123456789012:user/\\udc80"\n',
            "credentials[0].principal_arn",
            4,
        ),
    ],
    ids=[
        "no-secret",
        "two-secrets",
        "env-unset",
        "file-missing",
        "bad-arn",
        "unknown-key",
        "bad-expires",
        "policy-file-missing",
        "invalid-policy",
        "lone-surrogate",
    ],
)
def test_errors_name_file_line_and_field_never_the_secret(tmp_path: Path, entry: str, field: str, line: int) -> None:
    os.environ.pop("SIGV4_TEST_UNSET_VAR", None)
    path = write(tmp_path, "credentials:\n  - access_key_id: AKIAX\n" + entry)
    with pytest.raises(ConfigError) as info:
        load_credentials_file(path)
    first = info.value.issues[0]
    assert first.file == str(path)
    assert first.field == field
    assert first.line == line
    assert SECRET not in str(info.value)


def test_duplicate_keys_and_shapes(tmp_path: Path) -> None:
    entry = f'  - access_key_id: AKIAX\n    secret_access_key: "{SECRET}"\n    principal_arn: arn:aws:iam::1:user/a\n'
    with pytest.raises(ConfigError):
        load_credentials_file(write(tmp_path, "credentials:\n" + entry))  # account must be 12 digits
    ok = entry.replace("iam::1:", "iam::123456789012:")
    with pytest.raises(ConfigError) as info:
        load_credentials_file(write(tmp_path, "credentials:\n" + ok + ok))
    assert info.value.issues[0].field == "credentials[1].access_key_id" and info.value.issues[0].line == 5
    for text in ["- just a list\n", "credentials: {a: 1}\n", "credentials: [\n", "other: 1\n"]:
        with pytest.raises(ConfigError) as info:
            load_credentials_file(write(tmp_path, text))
        assert info.value.issues[0].file == str(tmp_path / "credentials.yaml")
    with pytest.raises(ConfigError):
        load_credentials_file(tmp_path / "absent.yaml")


def test_principal_details() -> None:
    assert principal_details("arn:aws:iam::123456789012:user/path/to/bob") == ("123456789012", "User", "", "bob")
    assert principal_details("arn:aws:iam::123456789012:root") == ("123456789012", "Account", "123456789012", "")
    assert principal_details("arn:aws:sts::123456789012:federated-user/eve") == (
        "123456789012",
        "FederatedUser",
        "123456789012:eve",
        "",
    )
    assert principal_details("arn:aws-cn:sts::123456789012:assumed-role/R/s") == (
        "123456789012",
        "AssumedRole",
        "R:s",
        "",
    )


def test_reload_on_change_keeps_old_on_error(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("first")
    path = write(
        tmp_path,
        "credentials:\n  - access_key_id: AKIAX\n    secret_access_key_file: secret.txt\n"
        "    principal_arn: arn:aws:iam::123456789012:user/a\n",
    )
    store = FileCredentialStore(path, reload_interval=0)
    first = store.current
    assert first.get("AKIAX") is not None and first.get("AKIAX").secret_access_key == "first"  # type: ignore[union-attr]
    assert store.reload_if_changed() is False
    secret_file.write_text("second-and-longer")  # a referenced file changing triggers a reload too
    assert store.reload_if_changed() is True
    assert store.current.get("AKIAX").secret_access_key == "second-and-longer"  # type: ignore[union-attr]
    good = store.current
    path.write_text("credentials: [ {access_key_id: AKIAX} ]\n")
    assert store.reload_if_changed() is False
    assert store.current is good and store.reload_errors == 1
    path.write_text("credentials: []\n")
    assert store.reload_if_changed() is True and len(store.current) == 0


async def test_store_watch_task_starts_and_stops(tmp_path: Path) -> None:
    path = write(tmp_path, "credentials: []\n")
    store = FileCredentialStore(path, reload_interval=30)
    await store.start()
    assert store._poller.running
    await store.stop()
    assert not store._poller.running


def test_signing_key_cache_is_bounded_and_per_snapshot() -> None:
    cred = credential()
    snapshot = CredentialSet({cred.access_key_id: cred}, max_signing_keys=3)
    keys = [snapshot.signing_key(cred, f"201508{d:02d}", "us-east-1", "service") for d in range(1, 6)]
    assert len(set(keys)) == 5
    assert len(snapshot._signing_keys) == 3
    assert snapshot.signing_key(cred, "20150805", "us-east-1", "service") is keys[-1]
    # Known value: the derived key of the AWS documentation example (secret of the suites, 20150830).
    key = snapshot.signing_key(cred, "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    fresh = CredentialSet({cred.access_key_id: cred})
    assert fresh._signing_keys == {}
