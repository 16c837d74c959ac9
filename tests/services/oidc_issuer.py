"""A real, local OpenID Connect issuer for the auth tests: keys made in the test, served over HTTP.

It serves ``/.well-known/openid-configuration`` and ``/jwks`` from a stdlib ``ThreadingHTTPServer``
bound to 127.0.0.1 on a free port (in a thread of the test process, so the test can rotate keys and
count requests directly), and mints tokens signed with its current key. ``stop()`` shuts the server
down and closes the socket, so "issuer down" is a refused connection, exactly as in production.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ALGORITHM = "ES256"  # EC P-256: key generation is instant, unlike RSA


class SigningKey:
    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:12]
        self.private = ec.generate_private_key(ec.SECP256R1())

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return jwk


class LocalOidcIssuer:
    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.keys = [SigningKey()]  # published; the first one signs
        self.requests: Counter[str] = Counter()  # path -> count
        self.jwks_uri: str | None = None  # what discovery names as jwks_uri (default: its own /jwks)
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="oidc-issuer", daemon=True
        )
        self._running = False

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[0]

    def start(self) -> LocalOidcIssuer:
        self._thread.start()
        self._running = True
        return self

    def stop(self) -> None:
        if self._running:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._running = False
        self._server.server_close()

    def rotate(self, *, keep_old: bool = False) -> SigningKey:
        """A new signing key (new kid); the old one is withdrawn unless ``keep_old``."""
        with self._lock:
            new = SigningKey()
            self.keys = [new, *self.keys] if keep_old else [new]
            return new

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in self.keys]}

    def mint(
        self,
        subject: str = "alice",
        *,
        audience: str | list[str] = "tesp",
        lifetime: float = 300,
        issued_at: float | None = None,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as this issuer would sign it; keyword arguments add or override claims."""
        now = time.time() if issued_at is None else issued_at
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            **claims,
        }
        signer = key or self.signing_key
        return jwt.encode(
            payload, signer.private, algorithm=ALGORITHM, headers={"kid": signer.kid, **(headers or {})}
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests[self.path] += 1
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.issuer,
                        "jwks_uri": issuer.jwks_uri or f"{issuer.url}/jwks",
                        "id_token_signing_alg_values_supported": [ALGORITHM],
                    }
                elif self.path == "/jwks":
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        return Handler


@contextmanager
def running_issuer() -> Iterator[LocalOidcIssuer]:
    issuer = LocalOidcIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()
