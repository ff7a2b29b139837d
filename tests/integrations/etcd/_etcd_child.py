"""
A separate process that registers one instance on etcd, for the lease tests.

    python -m tests.integrations.etcd._etcd_child <endpoint> <prefix> <service> <id> <ttl>

Prints ``ready`` once registered, then holds the registration until SIGTERM, when it
closes the registry (revoking its lease) and exits 0. SIGKILL leaves the lease to expire.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from resilient import Instance
from resilient.integrations.etcd import EtcdRegistry


async def main(endpoint: str, prefix: str, service: str, instance_id: str, ttl: float) -> None:
    """
    Register, say so, and wait for SIGTERM to deregister.
    """
    registry = EtcdRegistry(endpoint, prefix=prefix, ttl=ttl)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await registry.register(Instance(service, instance_id, "127.0.0.1", 9))
        print("ready", flush=True)
        await stop.wait()
    finally:
        await registry.close()


if __name__ == "__main__":
    endpoint, prefix, service, instance_id, ttl = sys.argv[1:]
    asyncio.run(main(endpoint, prefix, service, instance_id, float(ttl)))
