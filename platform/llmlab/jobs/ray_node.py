"""`ray start` for a cluster that lives on one machine's loopback interface.

Ray binds its GCS, raylet and agent ports to every interface, and to 127.0.0.1 only when
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (its switch for laptops). The same switch makes `ray start
--address` refuse to add a worker node, and without it the worker rewrites the head's 127.0.0.1
into the machine's public address and never reaches it. So this runs Ray's own `ray start` with
the switch off for every process it starts, except for that one refusal.

Usage: `python -m llmlab.jobs.ray_node start [ray start options]`.
"""

from __future__ import annotations

import os
import sys
import types

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def main() -> None:
    os.environ[LOOPBACK_SWITCH] = "0"  # read when Ray is imported, and inherited by every Ray process
    import ray._private.ray_constants as ray_constants
    import ray.scripts.scripts as scripts

    # Only `ray start`'s multi-node check sees the switch on; node addresses stay on loopback.
    constants_for_start = types.ModuleType(ray_constants.__name__)
    constants_for_start.__dict__.update(ray_constants.__dict__)
    constants_for_start.ENABLE_RAY_CLUSTER = True
    scripts.ray_constants = constants_for_start
    sys.argv = ["ray", *sys.argv[1:]]
    scripts.main()


if __name__ == "__main__":
    main()
