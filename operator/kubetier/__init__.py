"""kubetier: serve LLMs under several latency SLO tiers at once on Kubernetes."""

__version__ = "0.1.0"
