"""moot.client."""
