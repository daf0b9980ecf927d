"""The live-server helper for tests: one implementation in twotower.serving.launcher (shared with experiments)."""

from twotower.serving.launcher import LiveServer, free_port, port_is_free

__all__ = ["LiveServer", "free_port", "port_is_free"]
