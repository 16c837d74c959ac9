"""The auth settings actually in force: ``[auth]`` merged with tesp-api 0.2's ``[basic_auth]``/``[oauth]``.

Kept in one function so that the settings check at start-up and the authenticator built later can
never disagree about who may log in.
"""

from __future__ import annotations

# The function lives in config/settings.py, which checks the settings with it: that module then
# needs nothing of tesp_api.auth but stdlib-only leaves (passwords.py, urls.py), so config and auth
# do not import each other. Imported from here by the authenticator, the dashboard and the OpenAPI.
from tesp_api.config.settings import effective_auth_settings

__all__ = ["effective_auth_settings"]
