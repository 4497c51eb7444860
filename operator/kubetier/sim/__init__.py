"""Fleet simulator."""

import os as _os

# Opt-in compiled simulator (kubetier.sim.native): read before any policy module loads.
if _os.environ.get("KUBETIER_SIM_NATIVE", "0") not in ("", "0"):
    from .native import enable_from_env as _enable_native

    _enable_native()
