"""Test harness: pods as network namespaces (tether.testbed)."""

from .pods import Pod, PodError, PodFactory, cleanup_stale, make_pod

__all__ = ["Pod", "PodError", "PodFactory", "cleanup_stale", "make_pod"]
