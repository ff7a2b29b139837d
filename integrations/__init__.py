"""
Optional integrations, installed as `resilient.integrations`.

Each submodule needs its extra: ``pip install "resilient[aiohttp]"`` (or ``prometheus``,
``otel``, ``etcd``). `import resilient` never imports any of them.
"""
