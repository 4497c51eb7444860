"""The ModelService controller: ``handlers`` (kopf wiring) -> ``reconcile`` (observe,
apply, prune, status) over pure ``desired`` (children), ``diff`` (write or not) and
``status`` (conditions), with sizing rules from ``kubetier.policy.sizing``."""
