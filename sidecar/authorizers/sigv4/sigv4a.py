"""SigV4a: the asymmetric variant of SigV4 (`AWS4-ECDSA-P256-SHA256`), valid in a *set* of regions.

A SigV4a client never sends a public key. Both sides derive the same P-256 key pair from the access key id and the
secret access key with the key derivation AWS documents for SigV4a: NIST SP 800-108 KDF in counter mode with
HMAC-SHA256, keyed with `"AWS4A" + secret`, label `AWS4-ECDSA-P256-SHA256`, context `access_key_id || counter`,
output length 256 bits. The first candidate `c` with `c < n - 2` (n = order of P-256) gives the private scalar
`c + 1`; otherwise the one-byte counter is incremented and the next candidate tried. The derivation costs a scalar
multiplication, so the verifier derives each public key once and keeps it with the credential snapshot.

The region set (`X-Amz-Region-Set`) is a comma-separated list of region names in which `*` matches any run of
characters (`*`, `us-*`); a request is acceptable when any pattern matches any region this sidecar serves.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "AWS4-ECDSA-P256-SHA256"
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_N_MINUS_TWO = P256_ORDER - 2
_KDF_LABEL = ALGORITHM.encode()
_OUTPUT_BITS = (256).to_bytes(4, "big")
_BLOCK_ONE = (1).to_bytes(4, "big")
_MAX_SIGNATURE_HEX = 2 * 72  # a DER-encoded P-256 ECDSA signature is at most 72 bytes


class KeyDerivationError(ValueError):
    """No candidate below n-2 within 254 counters: astronomically unlikely, but a failure is never a key."""


def derive_private_key(access_key_id: str, secret_access_key: str) -> ec.EllipticCurvePrivateKey:
    """The SigV4a P-256 private key for a credential pair (deterministic; see the module docstring)."""
    input_key = b"AWS4A" + secret_access_key.encode()
    akid = access_key_id.encode()
    for counter in range(1, 255):
        fixed_input = _BLOCK_ONE + _KDF_LABEL + b"\x00" + akid + bytes((counter,)) + _OUTPUT_BITS
        candidate = int.from_bytes(hmac.new(input_key, fixed_input, hashlib.sha256).digest(), "big")
        if candidate < _N_MINUS_TWO:
            return ec.derive_private_key(candidate + 1, ec.SECP256R1())
    raise KeyDerivationError("SigV4a key derivation found no valid candidate")


def derive_public_key(access_key_id: str, secret_access_key: str) -> ec.EllipticCurvePublicKey:
    """The SigV4a public key a verifier checks signatures against."""
    return derive_private_key(access_key_id, secret_access_key).public_key()


def verify(public_key: ec.EllipticCurvePublicKey, signature_hex: str, string_to_sign: bytes) -> bool:
    """Whether `signature_hex` (hex of a DER ECDSA signature) signs `string_to_sign` with SHA-256.

    Malformed hex or DER is simply "not valid": callers map False to InvalidSignature.
    """
    if not signature_hex or len(signature_hex) > _MAX_SIGNATURE_HEX:
        return False
    try:
        der = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        public_key.verify(der, string_to_sign, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign(private_key: ec.EllipticCurvePrivateKey, string_to_sign: bytes) -> str:
    """Sign a string-to-sign the way a SigV4a client does (hex of DER). Used by tests and `check` tooling."""
    return private_key.sign(string_to_sign, ec.ECDSA(hashes.SHA256())).hex()


def _pattern(region_pattern: str) -> re.Pattern[str]:
    return re.compile("[^,]*".join(re.escape(part) for part in region_pattern.split("*")) + r"\Z")


def region_set_matches(region_set: str, regions: Iterable[str]) -> bool:
    """Whether the comma-separated `region_set` (with `*` wildcards) admits any of `regions`."""
    patterns = [p.strip() for p in region_set.split(",")]
    if not patterns or any(not p for p in patterns):
        return False
    served = tuple(regions)
    for pattern in patterns:
        if pattern == "*":
            return True
        if "*" not in pattern:
            if pattern in served:
                return True
            continue
        compiled = _pattern(pattern)
        if any(compiled.match(region) for region in served):
            return True
    return False
