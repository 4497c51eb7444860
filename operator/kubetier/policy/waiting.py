"""Which waiting request goes next: one order for the router and the fleet simulator.

Requests the policy told to "wait" are held by the router (or the simulator's model of
it) and asked again when capacity frees. The order decides who gets freed capacity
first, so it is policy, shared by both: higher tier priority first, then the earlier
arrival, then the order the waits began (a unique sequence number, so keys never tie).
"""

from __future__ import annotations

__all__ = ["waiting_key"]


def waiting_key(priority: int, arrival_s: float, seq: int) -> tuple[int, float, int]:
    """Sort key of a waiting request: smaller goes first."""
    return (-priority, arrival_s, seq)
