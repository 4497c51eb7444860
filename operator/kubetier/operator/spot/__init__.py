"""The spot-interruption controller: preemption notices on Nodes -> drained servers and Events."""
