"""tether: run a local process as if it were inside a remote pod."""

__version__ = "0.1.0"
