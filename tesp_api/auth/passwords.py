"""Password hashes for Basic users, and the ``tesp-api hash-password`` command.

Why scrypt from the standard library: it is memory-hard (costly to brute-force on GPUs), it ships
with every CPython built against OpenSSL, and so it adds no dependency to install or keep patched.
The hash is self-describing in the PHC string style passlib also uses::

    $scrypt$ln=15,r=8,p=1$<salt, base64>$<key, base64>

so the cost can be raised later without breaking hashes made today. Verification compares in
constant time (``hmac.compare_digest``). Settings hold only such hashes, never plain passwords.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import secrets
import sys
from dataclasses import dataclass
from typing import TextIO

SCHEME = "scrypt"
DEFAULT_LOG2_N = 15  # N = 32768: ~32 MiB and some tens of milliseconds per verification
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
# Bounds on what a hash in the settings may ask for, so a typo cannot make every login take minutes.
_MAX_LOG2_N = 20
_MAX_R = 32
_MAX_P = 16


class InvalidPasswordHash(ValueError):
    """The text is not a password hash this service understands (the message says what is expected)."""


@dataclass(frozen=True, slots=True)
class ScryptHash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def encode(self) -> str:
        return f"${SCHEME}$ln={self.log2_n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 1 << log2_n
    # hashlib's default maxmem (32 MiB) is below what N=2^15, r=8 needs: allow the parameters' own need.
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def parse_hash(text: str) -> ScryptHash:
    """Parse a hash made by :func:`hash_password`; raises InvalidPasswordHash with a hint otherwise."""
    hint = "expected a hash made by `tesp-api hash-password` ($scrypt$ln=..,r=..,p=..$salt$key)"
    parts = text.strip().split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != SCHEME:
        raise InvalidPasswordHash(hint)
    try:
        params = dict(item.split("=", 1) for item in parts[2].split(","))
        log2_n, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, key = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError):
        raise InvalidPasswordHash(hint) from None
    if (
        not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P)
        or not salt
        or len(key) < 16
    ):
        raise InvalidPasswordHash(
            f"scrypt parameters out of range (ln<={_MAX_LOG2_N}, r<={_MAX_R}, p<={_MAX_P})"
        )
    return ScryptHash(log2_n, r, p, salt, key)


def hash_password(
    password: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A new salted hash of ``password`` (tests pass a small ``log2_n`` to stay fast)."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, log2_n, r, p, _KEY_BYTES)
    return ScryptHash(log2_n, r, p, salt, key).encode()


def verify_password(password: str, hashed: ScryptHash) -> bool:
    """True when ``password`` matches; the comparison takes the same time wherever the bytes differ."""
    candidate = _derive(password, hashed.salt, hashed.log2_n, hashed.r, hashed.p, len(hashed.key))
    return hmac.compare_digest(candidate, hashed.key)


def _read_password(stdin: TextIO) -> str:
    """From a prompt (asked twice) when a person is typing, else the first line of stdin."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise ValueError("the passwords differ")
        return first
    return stdin.readline().rstrip("\r\n")


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``tesp-api hash-password``: print the hash of a password read from a prompt or stdin.

    The password is never taken from the command line (it would land in the shell history and in
    ``ps`` output for every user of the machine to see).
    """
    parser = argparse.ArgumentParser(
        prog="tesp-api hash-password",
        description="Read a password (prompt, or first line of stdin) and print its hash for "
        "auth.users[].password_hash or basic_auth.password_hash.",
    )
    parser.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_LOG2_N,
        metavar="LOG2_N",
        help=f"scrypt cost as log2(N), default {DEFAULT_LOG2_N}",
    )
    args = parser.parse_args(argv)
    out = stdout or sys.stdout
    err = sys.stderr
    try:
        if not 10 <= args.cost <= _MAX_LOG2_N:
            raise ValueError(f"--cost must be between 10 and {_MAX_LOG2_N}")
        password = _read_password(stdin or sys.stdin)
        hashed = hash_password(password, log2_n=args.cost)
    except (ValueError, EOFError) as exc:
        err.write(f"tesp-api hash-password: {exc or 'no password given'}\n")
        return 2
    out.write(hashed + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
