"""The package version (one place: pyproject.toml reads it, so does every record)."""

__version__ = "0.1.0"
