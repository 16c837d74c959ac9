"""Which ``callback_url`` a task may carry, and the guarded HTTP client that POSTs to it.

A callback makes *this service* open a connection to a URL chosen by an untrusted submitter, like
a data URL does, so it passes the same SSRF guard (tesp_api/transfer/egress.py), at create (400)
and at every delivery (DNS may change in between), plus one rule of its own:

* the URL must start with one of ``callbacks.allowed_prefixes`` (default ``["https://"]``);
* a prefix that is only a scheme (``https://``) admits public addresses only: loopback, private,
  link-local... are refused as for transfers;
* a prefix that names a host (``http://127.0.0.1:9000/hooks/``) is the operator's explicit trust in
  that host: it may then be private or loopback (that is how the tests reach their local receiver).
  The service's own control plane (Pulsar, the broker, this API) stays refused whatever the prefix;
* no user:password@ in the URL (it is shown in BASIC views and would be sent as credentials); no
  fragment; at most ``api.max_url_chars``.

Redirects are never followed: a 3xx answer is a failed delivery (retried like any other).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from tesp_api.config.settings import Settings, TransferSettings
from tesp_api.transfer.egress import EgressPolicy, control_plane_of
from tesp_api.transfer.http import guarded_transport
from tesp_api.transfer.redact import redact_url

_SCHEMES = ("http", "https")


def _canonical(url: str) -> str | None:
    """scheme://host[:port]/path?query with scheme and host lowered; None when it is not a URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in _SCHEMES or not parts.hostname:
        return None
    text = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path or '/'}"
    return text + (f"?{parts.query}" if parts.query else "")


class _Prefix:
    """One allowed prefix: a bare scheme (public addresses only) or a URL naming a host."""

    def __init__(self, text: str) -> None:
        self.text = text
        scheme, _, rest = text.partition("://")
        self.scheme = scheme.lower()
        if not rest:
            self.canonical = f"{self.scheme}://"
            self.host_rule: str | None = None
            return
        parts = urlsplit(text)
        netloc = parts.netloc.lower()
        self.canonical = f"{self.scheme}://{netloc}{parts.path or '/'}"
        if parts.query:
            self.canonical += f"?{parts.query}"
        port = parts.port or (443 if self.scheme == "https" else 80)
        host = parts.hostname or ""
        self.host_rule = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def matches(self, canonical: str) -> bool:
        return canonical.startswith(self.canonical)


class CallbackUrls:
    """The callback URL rules of one configuration, and one HTTP client per matching prefix."""

    def __init__(self, settings: Settings) -> None:
        conf = settings.callbacks
        self.enabled = conf.secret is not None
        self.max_chars = settings.api.max_url_chars
        self.timeout = conf.timeout
        self._prefixes = [_Prefix(p) for p in conf.allowed_prefixes]
        self._control_plane = control_plane_of(settings)
        self._resolve_timeout = settings.transfer.resolve_timeout
        self._policies: dict[str | None, EgressPolicy] = {}
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def _match(self, url: str) -> _Prefix | None:
        canonical = _canonical(url)
        if canonical is None:
            return None
        matching = [p for p in self._prefixes if p.matches(canonical)]
        # A prefix naming the host wins over a bare scheme (it may allow a private address).
        matching.sort(key=lambda p: p.host_rule is None)
        return matching[0] if matching else None

    def problem(self, url: str) -> str | None:
        """Why ``url`` cannot be a callback_url (no network: the create-time syntax check), or None."""
        if not self.enabled:
            return "callbacks are not enabled on this service (callbacks.secret is not set)"
        if len(url) > self.max_chars:
            return f"longer than {self.max_chars} characters"
        canonical = _canonical(url)
        if canonical is None:
            return "must be an absolute http(s) URL"
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            return "must not carry user:password@ (it would be shown in task views)"
        if parts.fragment:
            return "must not have a #fragment"
        if self._match(url) is None:
            allowed = ", ".join(p.text for p in self._prefixes) or "(none)"
            return f"{redact_url(url)!r} does not start with an allowed prefix (callbacks.allowed_prefixes: {allowed})"
        return None

    def policy_for(self, url: str) -> EgressPolicy:
        """The SSRF policy for ``url``: its matching prefix's host allowed (if it names one)."""
        prefix = self._match(url)
        rule = prefix.host_rule if prefix is not None else None
        policy = self._policies.get(rule)
        if policy is None:
            transfer = TransferSettings(
                allowed_hosts=[rule] if rule else [], resolve_timeout=self._resolve_timeout
            )
            policy = self._policies[rule] = EgressPolicy(transfer, self._control_plane)
        return policy

    async def address_problem(self, url: str) -> str | None:
        """The create-time SSRF check of the URL's host (a name that does not resolve now passes:
        it is checked again at every delivery)."""
        target = EgressPolicy.host_port_of(url)
        if target is None:
            return "must name a host"
        return await self.policy_for(url).host_reason(*target)

    def client_for(self, url: str) -> httpx.AsyncClient:
        """An HTTP client whose every connection passes the policy of ``url``; never redirects,
        no proxies from the environment (a proxy would connect out of the guard's sight)."""
        prefix = self._match(url)
        rule = prefix.host_rule if prefix is not None else None
        client = self._clients.get(rule)
        if client is None:
            client = self._clients[rule] = httpx.AsyncClient(
                transport=guarded_transport(self.policy_for(url)),
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self.timeout),
            )
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
