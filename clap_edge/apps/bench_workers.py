"""Parent side of the bench's worker processes: one per backend, spoken to over a pipe (``clap-edge bench``)."""

from __future__ import annotations

from typing import Any

__all__ = ["WorkerHandle"]


class WorkerHandle:
    """Parent side of one worker process."""

    def __init__(self, ctx: Any, cfg: Any, backend: str):
        from clap_edge.runtime.bench_worker import worker_main

        self.backend = backend
        self.conn, child = ctx.Pipe()
        extra = cfg.backend_options.get(backend, {})
        from clap_edge.apps.bench_peers import PEER_PREFIX, create_peer_runner

        factory = create_peer_runner if backend.startswith(PEER_PREFIX) else None  # pickled by name (spawn)
        self.process = ctx.Process(target=worker_main, args=(child, str(cfg.bundle), backend, cfg.threads, extra,
                                                             cfg.device, factory),
                                   name=f"clap-edge-bench-{backend}", daemon=True)
        self.process.start()
        child.close()
        self.info = self._reply()

    def call(self, command: str, *args: Any) -> Any:
        self.conn.send((command, *args))
        return self._reply()

    def _reply(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"bench worker for {self.backend!r} died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"backend {self.backend!r}: {payload}")
        return payload

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.call("stop")
        except Exception:
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
