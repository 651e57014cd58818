"""The dashboard's page and assets, served by every node (``moot.runtime.dashboard``)."""
