"""Settings: dynaconf reads settings.toml (profiles) and the environment; pydantic checks them."""

from tesp_api.config.loader import SettingsError, load_settings
from tesp_api.config.settings import Settings

__all__ = ["Settings", "SettingsError", "load_settings"]
