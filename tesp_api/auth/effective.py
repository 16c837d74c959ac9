"""The auth settings actually in force: ``[auth]`` merged with tesp-api 0.2's ``[basic_auth]``/``[oauth]``.

Kept in one function so that the settings check at start-up and the authenticator built later can
never disagree about who may log in.
"""

from __future__ import annotations

from tesp_api.config.settings import AuthSettings, BasicUser, OidcIssuer, Settings


def effective_auth_settings(settings: Settings) -> AuthSettings:
    """``settings.auth`` plus the legacy sections' user/issuer; raises ValueError when a mode lacks
    what it needs (basic without users, oidc without issuers)."""
    auth = settings.auth
    modes: list[str] = [m for m in auth.mode if m != "none"]
    users = list(auth.users)
    issuers = list(auth.issuers)
    legacy_basic = settings.basic_auth
    if legacy_basic.enable and legacy_basic.username and legacy_basic.password_hash is not None:
        if any(u.username == legacy_basic.username for u in users):
            raise ValueError(f"basic_auth.username {legacy_basic.username!r} is also listed in auth.users")
        # tesp-api 0.2 had one user who saw every task: keep that.
        users.append(
            BasicUser(username=legacy_basic.username, password_hash=legacy_basic.password_hash, admin=True)
        )
        modes.append("basic")
    legacy_oauth = settings.oauth
    if legacy_oauth.enable and legacy_oauth.issuer and legacy_oauth.audience:
        if not any(i.issuer == legacy_oauth.issuer for i in issuers):
            issuers.append(
                OidcIssuer.model_validate(
                    {"issuer": legacy_oauth.issuer, "audience": [legacy_oauth.audience]}
                )
            )
        modes.append("oidc")
    modes = list(dict.fromkeys(modes)) or ["none"]
    if "basic" in modes and not users:
        raise ValueError('auth.mode includes "basic" but no user is configured (auth.users)')
    if "oidc" in modes and not issuers:
        raise ValueError('auth.mode includes "oidc" but no issuer is configured (auth.issuers)')
    if "oidc" in modes:
        from tesp_api.auth.jwks import fetched_urls, insecure_url_reason  # imports httpx/jwt: only when used

        for issuer in issuers:
            for url in fetched_urls(issuer):
                reason = insecure_url_reason(url, auth.insecure_http_hosts)
                if reason:
                    raise ValueError(
                        f"auth.issuers: {issuer.issuer}: {reason}; for a test issuer only, list its host "
                        "in auth.insecure_http_hosts"
                    )
    return auth.model_copy(update={"mode": modes, "users": users, "issuers": issuers})
