"""Password hashing: scrypt (stdlib), salted, slow on purpose; the plain password is never kept."""

import base64
import hashlib
import hmac
import secrets

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
PASSWORD_LENGTH_MIN = 8
PASSWORD_LENGTH_MAX = 1024


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash``, salt and hash base64-encoded."""
    assert PASSWORD_LENGTH_MIN <= len(password) <= PASSWORD_LENGTH_MAX
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    scheme, n, r, p, salt, digest = stored.split("$")
    assert scheme == "scrypt", scheme
    candidate = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(candidate, base64.b64decode(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


ONE_TIME_PASSWORD_BYTES = 18


def one_time_password() -> str:
    """A random password to mail with an invite: 24 URL-safe characters (144 bits)."""
    return secrets.token_urlsafe(ONE_TIME_PASSWORD_BYTES)
