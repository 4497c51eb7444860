"""Built-in latency profiles (YAML), loaded by kubetier.policy.latency."""
