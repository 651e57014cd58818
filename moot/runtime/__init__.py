"""moot.runtime."""
