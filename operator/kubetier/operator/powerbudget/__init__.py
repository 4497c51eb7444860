"""The PowerBudget controller: POLCA power capping for each power domain.

- ``domain``: pure: Nodes, Pods and ModelServices -> the policy's readings, node caps,
  status and Events (no I/O);
- ``controller``: one control tick of one PowerBudget (reads, decides, writes);
- ``handlers``: kopf wiring (a timer per PowerBudget; caps lifted on delete).
"""
