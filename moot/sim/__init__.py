"""moot.sim."""
