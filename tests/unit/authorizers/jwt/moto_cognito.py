"""A real Cognito-compatible issuer for tests: `moto_server` on 127.0.0.1 driven through botocore.

It creates a user pool, an app client allowing the admin password flow, a user in a group, and returns the access
and ID tokens Cognito's `AdminInitiateAuth` issues (RS256, signed with moto's key, published at
`/{pool}/.well-known/jwks.json` on the same server).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session

from sidecar.harness.envoy import free_port, stop_process, wait_for_http

REGION = "us-east-1"


@dataclass(frozen=True)
class Pool:
    """One user pool with an app client and a signed-in user."""

    id: str
    client_id: str
    other_client_id: str
    access_token: str
    id_token: str
    jwks_uri: str

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{REGION}.amazonaws.com/{self.id}"


class MotoCognito:
    """`moto_server` as a child process on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoCognito:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"{self.url}/moto-api/", 60, proc=self.proc)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"moto_server did not start: {Path(self._log.name).read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def client(self) -> Any:
        return botocore.session.get_session().create_client(
            "cognito-idp",
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def pool(self, username: str = "alice", groups: tuple[str, ...] = ("admins",)) -> Pool:
        """A fresh pool, app client and user; the user signs in with the admin password flow."""
        idp = self.client()
        pool_id = idp.create_user_pool(PoolName="orders")["UserPool"]["Id"]
        client_id = idp.create_user_pool_client(
            UserPoolId=pool_id, ClientName="web", ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH"]
        )["UserPoolClient"]["ClientId"]
        other = idp.create_user_pool_client(UserPoolId=pool_id, ClientName="other")["UserPoolClient"]["ClientId"]
        idp.admin_create_user(UserPoolId=pool_id, Username=username, MessageAction="SUPPRESS")
        password = "Correct-Horse-9-battery"
        idp.admin_set_user_password(UserPoolId=pool_id, Username=username, Password=password, Permanent=True)
        for group in groups:
            idp.create_group(UserPoolId=pool_id, GroupName=group)
            idp.admin_add_user_to_group(UserPoolId=pool_id, Username=username, GroupName=group)
        result = idp.admin_initiate_auth(
            UserPoolId=pool_id,
            ClientId=client_id,
            AuthFlow="ADMIN_USER_PASSWORD_AUTH",
            AuthParameters={"USERNAME": username, "PASSWORD": password},
        )["AuthenticationResult"]
        return Pool(
            id=pool_id,
            client_id=client_id,
            other_client_id=other,
            access_token=result["AccessToken"],
            id_token=result["IdToken"],
            jwks_uri=f"{self.url}/{pool_id}/.well-known/jwks.json",
        )
