"""Authentication: none, HTTP Basic, OIDC bearer tokens -> a Principal(owner, is_admin).

No FastAPI in here: the HTTP layer (tesp_api/api/deps.py) passes the Authorization header value to
``Authenticator.authenticate`` and turns ``AuthError`` into a TES-shaped 401/503. Import from the
submodules (``tesp_api.auth.authenticator`` ...); this package file stays empty of imports so the
settings module can use ``tesp_api.auth.passwords`` without an import cycle.
"""
