"""The kubetier operator: one package per controller, registered by ``main.register``.

- ``modelservice/``: the ModelService controller (children, status, Events);
- ``powerbudget/``: the PowerBudget controller goes here (not written yet);
- ``spot/``: the spot-interruption handler goes here (not written yet);
- ``runtime``: kopf settings, login and the one ``kubetier.kube.KubeClient`` every
  controller shares; ``identity``: field manager and annotation domain;
- ``rbac``: the rules the operator needs; ``render_cli``: ``kubetier render``.

Controllers reach the API only through ``kubetier.kube``; their decision modules
(``desired``, ``status``, ``diff``) import neither it nor httpx (import contracts in
pyproject.toml).
"""
