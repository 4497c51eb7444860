"""What operators already use to watch kubetier: Prometheus alert rules and a Grafana
dashboard, generated from code (``kubetier observability``) so the metric names they query
are the ones the router and engines export, and tested with promtool."""
