"""An app module that raises while it is imported, as one with a bad setting would."""

raise RuntimeError("settings.DATABASE_URL is not set")
