"""Test harness: pods as network namespaces (see :mod:`harness.pods`)."""

from .pods import Pod, PodError, PodFactory, cleanup_stale, make_pod

__all__ = ["Pod", "PodError", "PodFactory", "cleanup_stale", "make_pod"]
