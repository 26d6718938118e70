"""Settings: schema, defaults, loading (TOML file + environment overrides), validation."""

from config.settings import ConfigError, Settings, load_settings

__all__ = ["ConfigError", "Settings", "load_settings"]
