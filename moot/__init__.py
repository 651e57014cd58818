"""moot: a federation of equal nodes where no computer is essential."""

__version__ = "0.1.0"
