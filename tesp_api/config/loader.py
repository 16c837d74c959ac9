"""Load settings the way tesp-api 0.2 users expect, then validate them into typed objects.

* settings.toml with a ``[default]`` section and named profiles that inherit from it;
  ``FASTAPI_PROFILE`` picks the profile (dynaconf ``environments=True``).
* ``.secrets.toml`` beside it, same layout, for what must not be committed.
* ``TESP_API_<SECTION>__<KEY>`` environment variables override anything (values parsed as TOML,
  so ``TESP_API_ENGINE__ENABLED=false`` is a bool).
* ``TESP_API_SETTINGS`` names another settings file; ``CONTAINER_TYPE`` picks the runtime as it did
  (over the files; ``TESP_API_RUNTIME__TYPE`` wins over it).
* An unknown profile (``FASTAPI_PROFILE`` or ``--profile``) stops the start, naming those that exist.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf  # type: ignore[import-untyped]
from dynaconf.utils.files import find_file  # type: ignore[import-untyped]
from pydantic import ValidationError

from tesp_api.config.settings import Settings

PROFILE_ENV_VAR = "FASTAPI_PROFILE"
DEFAULT_PROFILE = "default"
# Sections dynaconf treats specially, not profiles one can pick.
_NOT_PROFILES = {"global", "dynaconf"}
# An explicit profile (--profile) must win over $FASTAPI_PROFILE: dynaconf lets its env switcher variable
# override the `env` option, so with an explicit profile it is pointed at a variable nobody sets.
_NO_SWITCHER = "TESP_API_NO_PROFILE_SWITCH_FOR_DYNACONF"
ENV_PREFIX = "TESP_API"
# Dict keys below these names are user data (header names, runtime.env variable names such as
# DOCKER_HOST...), not setting names: keep their case.
_KEEP_CASE_UNDER = {"headers", "env"}


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


def _found(files: list[str]) -> list[str]:
    """The files dynaconf will really read: it looks for a relative name beside the running script and
    in every parent directory of it and of the working directory (its own find_file)."""
    found = (find_file(name) for name in files)
    return [f for f in found if f and Path(f).is_file()]


def available_profiles(files: list[str]) -> list[str] | None:
    """The profiles the settings files define (``default`` always exists); None when a file is not TOML
    and so cannot be read here (dynaconf reads YAML and others too: no check then)."""
    names = {DEFAULT_PROFILE}
    for name in _found(files):
        path = Path(name)
        if path.suffix != ".toml":
            return None
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from None
        names.update(
            k.lower() for k, v in data.items() if isinstance(v, dict) and k.lower() not in _NOT_PROFILES
        )
    return sorted(names)


def _check_profile(profile: str, files: list[str], explicit: bool) -> None:
    """An unknown profile would silently run [default]: stop instead, naming those that exist."""
    known = available_profiles(files)
    if known is None or profile.lower() in known:
        return
    source = "--profile" if explicit else f"${PROFILE_ENV_VAR}"
    existing = _found(files)
    where = " and ".join(existing) if existing else f"{files[0]} (absent)"
    raise SettingsError(f"unknown profile {profile!r} ({source}); profiles in {where}: {', '.join(known)}")


def load_raw(
    settings_file: str | os.PathLike[str] | None = None, profile: str | None = None
) -> dict[str, Any]:
    """The merged settings of one profile, as plain lower-case dicts, before validation.

    ``profile`` (the --profile option) wins over ``$FASTAPI_PROFILE``; an unknown one is a SettingsError.
    """
    files = _settings_files(settings_file)
    chosen = profile or os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE
    _check_profile(chosen, files, explicit=bool(profile))
    options: dict[str, Any] = {
        "environments": True,
        "default_env": DEFAULT_PROFILE,
        "env": chosen,
        "env_switcher": _NO_SWITCHER if profile else PROFILE_ENV_VAR,
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
    if container_type and not os.environ.get(f"{ENV_PREFIX}_RUNTIME__TYPE"):
        # An environment variable, so it wins over the files (the shipped settings.toml says "auto"), as
        # in tesp-api 0.2; TESP_API_RUNTIME__TYPE, the newer name, wins over it.
        raw.setdefault("runtime", {})["type"] = container_type.lower()
    return raw


def load_settings(
    settings_file: str | os.PathLike[str] | None = None, profile: str | None = None
) -> Settings:
    return validate_settings(load_raw(settings_file, profile))


def validate_settings(raw: dict[str, Any]) -> Settings:
    """Typed settings from raw ones, or a SettingsError naming every offending key (no values: they
    may be secrets), which the commands print before exiting 2."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
