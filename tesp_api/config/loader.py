"""Load settings the way tesp-api 0.2 users expect, then validate them into typed objects.

* settings.toml with a ``[default]`` section and named profiles that inherit from it;
  ``FASTAPI_PROFILE`` picks the profile (dynaconf ``environments=True``).
* ``.secrets.toml`` beside it, same layout, for what must not be committed.
* ``TESP_API_<SECTION>__<KEY>`` environment variables override anything (values parsed as TOML,
  so ``TESP_API_ENGINE__ENABLED=false`` is a bool).
* ``TESP_API_SETTINGS`` names another settings file; ``CONTAINER_TYPE`` picks the runtime as it did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf
from pydantic import ValidationError

from tesp_api.config.settings import Settings

PROFILE_ENV_VAR = "FASTAPI_PROFILE"
ENV_PREFIX = "TESP_API"
# Dict keys below these names are user data (header names...), not setting names: keep their case.
_KEEP_CASE_UNDER = {"headers"}


class SettingsError(Exception):
    """The settings cannot be used; the message names every offending key."""


def _lower_keys(value: Any, keep_case: bool = False) -> Any:
    if isinstance(value, dict):
        return {
            (k if keep_case else str(k).lower()): _lower_keys(v, str(k).lower() in _KEEP_CASE_UNDER)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


def _settings_files(explicit: str | os.PathLike[str] | None) -> list[str]:
    main = explicit or os.environ.get(f"{ENV_PREFIX}_SETTINGS") or "settings.toml"
    main_path = Path(main)
    if explicit or os.environ.get(f"{ENV_PREFIX}_SETTINGS"):
        # dynaconf looks for a relative name beside the running script first (.venv/bin -> a checkout's
        # settings.toml); a file the user names is relative to the working directory.
        main_path = main_path.absolute()
    files = [str(main_path)]
    secrets = main_path.with_name(".secrets.toml")
    files.append(str(secrets))
    return files


def load_raw(settings_file: str | os.PathLike[str] | None = None, profile: str | None = None) -> dict[str, Any]:
    """The merged settings of one profile, as plain lower-case dicts, before validation."""
    files = _settings_files(settings_file)
    options: dict[str, Any] = {
        "environments": True,
        "default_env": "default",
        "env": profile or os.environ.get(PROFILE_ENV_VAR, "default"),
        "env_switcher": PROFILE_ENV_VAR,
        "envvar_prefix": ENV_PREFIX,
        "merge_enabled": True,
        "load_dotenv": False,
    }
    dyn = Dynaconf(settings_files=files, **options)
    raw = _lower_keys(dyn.as_dict())
    # dynaconf reports its own options among the settings; they are not ours to validate.
    for key in [*options, "settings_files", "settings"]:  # "settings" = TESP_API_SETTINGS, the file name
        raw.pop(key, None)
    raw = {k: v for k, v in raw.items() if not k.endswith("_for_dynaconf")}
    container_type = os.environ.get("CONTAINER_TYPE")
    if container_type:
        raw.setdefault("runtime", {})
        raw["runtime"].setdefault("type", container_type.lower())
    return raw


def load_settings(settings_file: str | os.PathLike[str] | None = None, profile: str | None = None) -> Settings:
    raw = load_raw(settings_file, profile)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
