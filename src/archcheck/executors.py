"""Where the per-byte work runs: this machine's process pool, or a Dask cluster.

``--executor local`` (the default) is a ProcessPoolExecutor of forkserver workers.
``--executor dask://HOST:PORT`` sends the same tasks to a running Dask scheduler and
``--executor dask-local[:N]`` starts a LocalCluster of N worker processes here. Tasks are
descriptors (a source ref: URI, pinned identity; a segment: offset, length, nonce), never
bytes; a worker reads its ranges itself, so decoded bytes stay in the worker that decoded them.
Results come back to the coordinator, which alone writes the manifest and the ledger.

Dask is the optional extra ``archcheck[dask]``; a Dask cluster's workers read the archive
where they are, so give it object URIs (or paths every worker sees)."""
from __future__ import annotations

import atexit
import os
import re
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable

from . import processes
from .errors import UsageError
from .worker import init_worker

_SPEC = re.compile(r"local|dask://[^\s/]+:\d+|dask-local(?::(\d+))?")


@dataclass(frozen=True)
class ExecutorSpec:
    text: str = "local"

    @property
    def is_dask(self) -> bool:
        return self.text != "local"

    @property
    def is_remote(self) -> bool:
        """Workers may be on other machines: they reach the coordinator over TCP."""
        return self.text.startswith("dask://")


def parse_executor(text: str | None) -> ExecutorSpec:
    text = (text or "local").strip()
    if not _SPEC.fullmatch(text):
        raise UsageError(f"--executor must be local, dask://HOST:PORT or dask-local[:N], not {text!r}")
    if text != "local":
        _require_dask()
    return ExecutorSpec(text)


def start_cluster(spec: ExecutorSpec, archives: tuple[str, ...] = ()) -> None:
    """Begin reaching a Dask cluster (or starting a LocalCluster, about a second, its workers
    warmed for ``archives``) on a thread, while the coordinator opens the archives; whoever
    needs the client then waits for that start, and gets its error if it failed."""
    if spec.is_dask:
        threading.Thread(target=_client, args=(spec, processes.warm_modules(archives)),
                         kwargs={"quiet": True}, name="archcheck-dask-start", daemon=True).start()


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError("the Dask executor needs Dask: pip install 'archcheck[dask]'") from None


def open_pool(spec: ExecutorSpec, workers: int) -> Executor:
    if not spec.is_dask:
        return ProcessPoolExecutor(workers, mp_context=processes.context(), initializer=init_worker,
                                   initargs=(os.getpid(),))
    return DaskPool(_client(spec))


def cluster_threads(spec: ExecutorSpec) -> int:
    """The task slots of the cluster's workers, at least 1."""
    return max(1, sum(_client(spec).nthreads().values()))


_clients: dict[str, Future] = {}  # executor -> its client, once started (or starting)
_clients_lock = threading.Lock()


def _client(spec: ExecutorSpec, preload: tuple[str, ...] = (), quiet: bool = False) -> Any:
    """One client per executor and coordinator process (a LocalCluster takes seconds to start):
    every archive of a drill shares it; it closes when the process exits. The first caller
    starts it, the others wait for that start; a start that failed is forgotten once said, so
    a later caller tries again. ``preload``: modules a LocalCluster's workers import as they
    start (processes.warm_modules). ``quiet``: a start on a thread of its own, whose failure
    is for the next caller to say."""
    with _clients_lock:
        started = _clients.get(spec.text)
        if started is None:
            started = _clients[spec.text] = Future()
            owner = True
        else:
            owner = False
    if owner:
        try:
            started.set_result(_connect(spec, preload))
            atexit.register(_close, spec.text)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            started.set_exception(exc)
            if quiet:
                return None
    try:
        return started.result()  # every start ends: Client and LocalCluster have their timeouts
    except BaseException:
        with _clients_lock:
            if _clients.get(spec.text) is started:
                del _clients[spec.text]
        raise


def _connect_timeout() -> float:
    """Seconds to reach a Dask scheduler: ARCHCHECK_DASK_CONNECT_TIMEOUT, 10 if unset."""
    text = os.environ.get("ARCHCHECK_DASK_CONNECT_TIMEOUT", "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise UsageError(f"ARCHCHECK_DASK_CONNECT_TIMEOUT must be a number of seconds above 0, not {text!r}")
    return seconds


def _connect(spec: ExecutorSpec, preload: tuple[str, ...]) -> Any:
    from distributed import Client, LocalCluster
    if spec.text.startswith("dask://"):
        address = "tcp://" + spec.text[len("dask://"):]
        try:
            return Client(address, set_as_default=False, timeout=_connect_timeout())
        except (OSError, TimeoutError) as exc:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    count = int(_SPEC.fullmatch(spec.text)[1] or 2)
    cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=40, preload=list(preload))
    return Client(cluster, set_as_default=False)


def _close(text: str) -> None:
    started = _clients.pop(text, None)
    client = started.result() if started is not None and started.done() and not started.exception() else None
    if client is not None:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


class _DaskFuture(Future):
    """Cancelling it cancels the task in the cluster too, even once it runs (the cluster would
    otherwise start it again on another worker when its worker dies)."""

    def __init__(self, remote: Any):
        super().__init__()
        self.remote = remote

    def cancel(self) -> bool:
        self.remote.cancel()  # its done callback ends this future
        return super().cancel()


class DaskPool(Executor):
    """A concurrent.futures Executor over a Dask client, with the pool's contract: a task
    whose workers kept dying is a BrokenProcessPool, as a dead pool worker is."""

    def __init__(self, client: Any):
        self.client = client
        self.pending: set[Any] = set()
        self.lock = threading.Lock()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        remote = self.client.submit(fn, *args, pure=False, **kwargs)
        result = _DaskFuture(remote)
        with self.lock:
            self.pending.add(remote)

        def done(finished: Any) -> None:
            with self.lock:
                self.pending.discard(finished)
            if finished.cancelled() or finished.status == "cancelled":
                # running futures cannot be cancelled: they end, so that nothing waits forever
                if not result.done():
                    result.set_exception(BrokenProcessPool("the Dask task was cancelled (stopped, or the "
                                                           "client lost its scheduler)"))
                return
            try:
                value = finished.result()  # done: this only brings the result over
            except Exception as exc:  # noqa: BLE001 - handed on through the future
                if type(exc).__name__ == "KilledWorker":
                    exc = BrokenProcessPool(f"Dask workers died running it: {exc}")
                result.set_exception(exc)
            else:
                result.set_result(value)
        result.set_running_or_notify_cancel()
        remote.add_done_callback(done)  # Dask runs it in a thread of its own
        return result

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self.lock:
            pending = list(self.pending)
        if not pending:
            return
        if cancel_futures:
            self.client.cancel(pending)
        elif wait:
            from distributed import wait as dask_wait
            dask_wait(pending)
