"""Code shared by the tests and the benchmarks; it asserts nothing itself.

- `support.basics`: free ports, waiting for a condition, unique names, process trees.
- `support.topics`: create, delete, produce to and read Kafka topics.
- `support.worker`: `mind-stream worker` as a subprocess (`Worker`), its settings and its /metrics.
- `support.milvus`: a Milvus server on TCP for the `http://` store path, releasing a Lite file.
- `support.artifact`: a tiny real exported artifact built in seconds.

Tests import `from support.worker import Worker` (pytest puts tests/ on sys.path: rootdir-style imports,
no __init__.py in tests/); the benchmarks put tests/ on sys.path in `tests/benchmarks/common.py`.
"""

import os

# gRPC (pymilvus' transport) >= 1.80 runs its fork handlers in a child made by fork() while this process
# holds a channel, and that child can abort (SIGABRT, "epoll_wait error: Bad file descriptor") before it
# execs: grpc/grpc#43055. Tests open Milvus Lite in-process, then spawn workers with a preexec_fn (which
# forces fork() over vfork()). Set before anything imports grpc: importing `support` first does.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
