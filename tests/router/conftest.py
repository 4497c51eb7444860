"""Fixtures: real engine-simulator and router processes on loopback (see router_procs)."""

from router_procs import procs, small_profile  # noqa: F401  (fixtures)
