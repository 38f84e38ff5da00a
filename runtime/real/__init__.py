"""The real backend: transformers models in site processes, driven through the controller slot.

- ``engine``: per-request KV caches, ragged batched forwards, lossless verification and drafting
- ``site`` / ``site.proto``: a drafter site (gRPC asyncio server) and its messages
- ``transport``: the target's gRPC clients, WAN emulation and health checks
- ``runtime``: :class:`~runtime.real.runtime.RealRuntime`, the ``Runtime`` + ``SystemView``
- ``deploy``: deployment files (checkpoints, addresses) over a scenario
- ``replay``: scenario workloads through the real runtime, and simulator calibration
- ``gym``: the Gymnasium environment with episodes on the real runtime
"""
