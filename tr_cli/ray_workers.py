"""`stream --ray`: the segments of one clip restored in parallel by Ray actors, one ComfyUI server each.

    python -m tr_cli stream in.mp4 -o out.mkv --ray [ADDRESS] [--workers-per-node N | --server URL ...]

* Workers: one Ray actor (:class:`SegmentWorker`) per ComfyUI server. Without ``--server`` every alive Ray
  node gets one actor per GPU (``num_gpus=1``: Ray sets CUDA_VISIBLE_DEVICES, so each server sees its own
  GPU) or ``--workers-per-node N`` CPU actors, each starting its own local ComfyUI on that node (stopped by
  the kernel if the actor is killed: launch.start's ``die_with_parent``). ``--server URL`` (repeatable):
  one actor per running server. ADDRESS is passed to ``ray.init`` (``auto``, ``host:6379``); without it a
  local Ray is started for the run and shut down after it.
* Only the restore is distributed: the driver reads the input, hands segment k to an idle worker (its frames
  through Ray's object store), and gets the restored frames back. Every result is saved at once in the state
  folder as ``done_<k>.npy`` (written to a temp name, fsynced, renamed: a file there is whole) and accepted
  once; the driver then blends, spools and commits segments in order exactly as a one-server run does
  (tr_cli/stream.py), so both give the same frames, given servers that compute alike: the same device and the
  same number of math threads (the driver's ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are passed to every worker
  and its server; torch's CPU sums change in the last bit with the thread count). A rerun after the driver was killed resumes from the
  committed state and reuses every ``done_<k>.npy`` that was saved ahead of it.
* Faults: a segment whose worker (actor or server) dies, or that fails, is queued again for a worker that
  has not tried it; a worker whose server no longer answers is retired. A segment that failed on every
  worker still alive stops the run with its error (exit 4), keeping the committed spool and every saved
  segment for the rerun. Reading stays at most ``2 x workers`` segments ahead of the oldest one not yet
  committed, so memory and the saved-ahead files stay bounded.
* Progress: one line for the clip (segments done/total, restored frames per second over all workers, ETA);
  ``--status`` adds every worker's state.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from collections import deque

import numpy as np

from .client import EXIT_FAILED, EXIT_SERVER, EXIT_USAGE, RunnerError
from .progress import fmt_seconds

INSTALL_HINT = "pip install 'ray>=2.9'  (or, in the pack folder, pip install '.[ray]'), on every Ray node"
HOLD_ENV = "TR_RAY_TEST_HOLD"  # test hook "k:DIR": the first worker given segment k marks DIR/hold_k and
#                                holds it until its server stops answering (a deterministic mid-segment kill)
FAIL_ENV = "TR_RAY_TEST_FAIL"  # test hook "k": every worker fails segment k (a segment no worker can restore)
FORWARDED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", HOLD_ENV, FAIL_ENV)  # driver settings the workers' servers get


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise RunnerError(f"--ray: Ray is not installed ({e}). Install it with: {INSTALL_HINT}. Without --ray, "
                          f"stream restores on one server as before.", EXIT_USAGE) from None
    return ray


def check_args(args, servers: list[str]) -> None:
    """Usage errors of the --ray options (before any work), and Ray importable."""
    if args.workers_per_node is not None and args.workers_per_node < 1:
        raise RunnerError(f"--workers-per-node: expected at least 1, got {args.workers_per_node}", EXIT_USAGE)
    if servers and args.workers_per_node is not None:
        raise RunnerError("--workers-per-node starts servers on the Ray nodes; with --server the workers use the "
                          "given servers: pass one or the other", EXIT_USAGE)
    import_ray()


class SegmentWorker:
    """A Ray actor's state: one restore backend (tr_cli/stream.py), i.e. one ComfyUI server it reaches
    (``url``) or starts on its node (``url`` None). Methods run one at a time."""

    def __init__(self, args, fps, url: str | None, name: str):
        from .stream import ComfyBackend, Passthrough

        args = copy.copy(args)
        args.server, args.servers, args.quiet = url, [url] if url else [], True
        if url is None and not os.environ.get("CUDA_VISIBLE_DEVICES"):
            args.cpu = True  # Ray gave this actor no GPU
        self.name, self.work = name, tempfile.mkdtemp(prefix="tr_ray_")
        if args.backend == "passthrough":
            self.backend = Passthrough()
        else:
            self.backend = ComfyBackend(args, fps, self.work)
            self.backend.die_with_parent = True

    def start(self) -> dict:
        self.backend.start()
        return self.describe()

    def describe(self) -> dict:
        client = getattr(self.backend, "client", None)
        return {"name": self.name, "url": client.url if client else "passthrough", "pid": os.getpid()}

    def alive(self) -> bool:
        client = getattr(self.backend, "client", None)
        return client is None or client.ping(5)

    def restore(self, frames: np.ndarray, k: int) -> np.ndarray:
        """Restored frames [n, H', W', 3] uint8 of segment k's frames [n, H, W, 3] uint8."""
        self._test_hold(k)
        if os.environ.get(FAIL_ENV) == str(k):
            raise RunnerError(f"segment {k}: failed on purpose ({FAIL_ENV})", EXIT_FAILED)
        return self.backend.restore(frames, k)

    def _test_hold(self, k: int) -> None:
        spec = os.environ.get(HOLD_ENV)
        if not spec or int(spec.split(":", 1)[0]) != k:
            return
        try:
            fd = os.open(os.path.join(spec.split(":", 1)[1], f"hold_{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # held once already: this is the retry, restore normally
        os.write(fd, self.describe()["url"].encode())
        os.close(fd)
        deadline = time.time() + 600
        while time.time() < deadline and self.alive():
            time.sleep(0.2)  # polls the server until the test has killed it (or the driver is killed)

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)


class ClipProgress:
    """One line for the whole clip; ``status`` adds a line per worker. Fed by :class:`RayExecutor`."""

    def __init__(self, total: int, done: int, quiet: bool, status: bool, out=sys.stderr):
        self.total, self.done, self.quiet, self.status, self.out = total, done, quiet, status, out
        self.frames = 0  # restored in this run (overlap included), for the rate
        self.t0 = time.time()
        self.workers: dict[str, dict] = {}

    def worker(self, name: str, **fields) -> None:
        self.workers.setdefault(name, {"state": "idle", "done": 0, "failed": 0}).update(fields)

    def segment_done(self, n: int) -> None:
        self.done += 1
        self.frames += n

    def line(self) -> str:
        total = max(self.total, self.done)
        width = 20
        fill = width * self.done // total if total else width
        text = f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{total} segments"
        elapsed = time.time() - self.t0
        live = sum(1 for w in self.workers.values() if not w["state"].startswith("dead"))
        if self.frames and elapsed > 0:
            rate = self.frames / elapsed
            per_segment = self.frames / max(1, self.done_here())
            eta = (total - self.done) * per_segment / rate
            text += f" | {rate:.2f} frames/s on {live} workers | ETA {fmt_seconds(eta)}"
        return text

    def done_here(self) -> int:
        return sum(w["done"] for w in self.workers.values())

    def show(self) -> None:
        if self.quiet:
            return
        print(self.line(), file=self.out, flush=True)
        if self.status:
            now = time.time()
            for name, w in self.workers.items():
                state = w["state"]
                if "since" in w and state.startswith("segment"):
                    state += f" for {fmt_seconds(now - w['since'])}"
                print(f"  {name} {w.get('url', '')}: {state}, {w['done']} done, {w['failed']} failed",
                      file=self.out, flush=True)


class RayExecutor:
    """The executor seam of tr_cli/stream.py over Ray actors: ``run(segments)`` yields
    ``(k, n, restored, last)`` in segment order, whichever worker finished first."""

    def __init__(self, args, fps, state_dir: str, total: int):
        self.args, self.fps, self.state_dir, self.total = args, fps, state_dir, total
        self.ray = import_ray()
        self.owns_ray = False
        self.workers: dict[str, object] = {}  # name -> actor handle, live workers only
        self.progress = None

    # ------------------------------------------------------------ workers
    def start(self) -> None:
        ray, args = self.ray, self.args
        if not ray.is_initialized():
            opts = {"include_dashboard": False, "log_to_driver": not args.quiet}
            ray.init(**opts) if args.ray == "local" else ray.init(address=args.ray, **opts)
            self.owns_ray = True
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        cls = ray.remote(SegmentWorker)
        made = []

        def spawn(url, **need):
            name = f"w{len(made)}"
            opts = {"max_restarts": 0, "max_task_retries": 0, **need, **({"runtime_env": {"env_vars": env}} if env else {})}
            made.append((name, cls.options(**opts).remote(args, self.fps, url, name)))

        if args.servers:
            for url in args.servers:
                spawn(url, num_cpus=0)
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            for node in (n for n in ray.nodes() if n.get("Alive")):
                res = node.get("Resources", {})
                gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
                per = args.workers_per_node or max(1, gpus)
                need = {"num_gpus": gpus / per} if gpus else {"num_cpus": cpus // per if cpus >= per else 0}
                where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                for _ in range(per):
                    spawn(None, scheduling_strategy=where, **need)
        self.workers = dict(made)
        self.progress = ClipProgress(self.total, 0, args.quiet, args.status)
        errors = []
        for name, handle in made:
            try:
                info = ray.get(handle.start.remote())
                self.progress.worker(name, url=info["url"])
            except Exception as e:  # noqa: BLE001  (a worker that cannot start is dropped, the others run)
                errors.append(f"{name}: {_cause(e)}")
                self._retire(name, f"dead: could not start ({_cause(e)})")
        if not self.workers:
            raise RunnerError(f"no Ray worker could start its ComfyUI: {'; '.join(errors)}", EXIT_SERVER)
        for err in errors:
            print(f"warning: Ray worker {err}", file=sys.stderr)
        if not args.quiet:
            print(f"{len(self.workers)} Ray workers: "
                  + ", ".join(f"{n} {self.progress.workers[n]['url']}" for n in self.workers), file=sys.stderr)

    def _retire(self, name: str, why: str) -> None:
        handle = self.workers.pop(name, None)
        if self.progress is not None:
            self.progress.worker(name, state=why)
        if handle is not None:
            self.ray.kill(handle, no_restart=True)  # an owned server follows (die_with_parent)

    def close(self) -> None:
        for name in list(self.workers):
            if self.progress is None or self.progress.workers.get(name, {}).get("state") == "idle":
                try:  # deletes this run's files on its server, stops an owned server
                    self.ray.get(self.workers[name].close.remote(), timeout=120)
                except Exception as e:  # noqa: BLE001
                    print(f"warning: Ray worker {name} did not close cleanly: {_cause(e)}", file=sys.stderr)
            self._retire(name, "closed")
        if self.owns_ray:
            self.ray.shutdown()

    # ------------------------------------------------------------ segments
    def _done_path(self, k: int) -> str:
        return os.path.join(self.state_dir, f"done_{k:05d}.npy")

    def run(self, segments):
        from .stream import _atomic_npy

        ray, prog = self.ray, self.progress
        prog.t0 = time.time()  # the rate counts restore time only, not the workers' start
        seg_iter = iter(segments)
        first = None
        meta = {}  # k -> (n, last, input ref or None) for every segment read and not yet yielded
        tried: dict[int, dict[str, str]] = {}  # k -> {worker: error}
        queue: deque[int] = deque()  # segments waiting for a worker (new or to retry)
        inflight = {}  # result ref -> (k, worker)
        idle = deque(self.workers)
        done = set()
        exhausted = False
        while True:
            if first is None and not exhausted:  # the first segment read gives the resume point
                exhausted = not self._read(seg_iter, meta, queue, done)
                first = min(meta) if meta else None
                self._drop_stale(first)
                prog.done = first or 0
            while first in done:  # in order, each once; resuming here means the driver committed it
                n, last, _ = meta.pop(first)
                res = np.load(self._done_path(first))
                yield first, n, res, last
                os.remove(self._done_path(first))
                if last:
                    return
                done.discard(first)
                first += 1
            if first is None:
                raise RunnerError("no segment to restore", EXIT_FAILED)
            while not exhausted and len(meta) < 2 * max(1, len(self.workers)) and (idle or not queue):
                exhausted = not self._read(seg_iter, meta, queue, done)
                if first in done:
                    break
            if first in done:
                continue
            for name in list(idle):
                k = next((k for k in queue if name not in tried.get(k, {})), None)
                if k is None:
                    continue
                queue.remove(k)
                idle.remove(name)
                inflight[self.workers[name].restore.remote(meta[k][2], k)] = (k, name)
                prog.worker(name, state=f"segment {k}", since=time.time())
            if not inflight:
                k = queue[0] if queue else first
                errs = "; ".join(f"{w}: {e}" for w, e in tried.get(k, {}).items()) or "no worker left"
                raise RunnerError(f"segment {k} failed on every worker ({errs}); the finished segments are kept "
                                  f"in {self.state_dir}: a rerun resumes", EXIT_FAILED)
            ready, _ = ray.wait(list(inflight), num_returns=1)
            k, name = inflight.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001  (task error, actor or server death: all retried elsewhere)
                tried.setdefault(k, {})[name] = _cause(e)
                queue.appendleft(k)
                prog.workers[name]["failed"] += 1
                print(f"warning: segment {k} failed on Ray worker {name}: {_cause(e)}; retrying on another worker",
                      file=sys.stderr)
                if self._healthy(name):
                    idle.append(name)
                    prog.worker(name, state="idle")
                else:
                    self._retire(name, "dead: server or worker gone")
                prog.show()
                continue
            if k not in done:  # accepted once: a late duplicate is dropped
                _atomic_npy(self._done_path(k), np.asarray(res))
                done.add(k)
                meta[k] = meta[k][:2] + (None,)  # the input frames are no longer needed
                prog.segment_done(len(res))
                prog.workers[name]["done"] += 1
            idle.append(name)
            prog.worker(name, state="idle")
            prog.show()

    def _read(self, seg_iter, meta, queue, done) -> bool:
        """Read one more segment: already saved ahead -> done, else queued with its frames in the object
        store. False when the input is exhausted."""
        item = next(seg_iter, None)
        if item is None:
            return False
        k, frames, last = item
        if os.path.exists(self._done_path(k)):
            meta[k] = (len(frames), last, None)
            done.add(k)
            self.progress.done += 1
        else:
            meta[k] = (len(frames), last, self.ray.put(frames))
            queue.append(k)
        return not last

    def _drop_stale(self, first) -> None:
        """Saved-ahead results of segments the committed state already holds (a kill between commit and delete)."""
        for f in os.listdir(self.state_dir):
            if f.startswith("done_") and f.endswith(".npy") and first is not None and int(f[5:10]) < first:
                os.remove(os.path.join(self.state_dir, f))

    def _healthy(self, name: str) -> bool:
        try:
            return bool(self.ray.get(self.workers[name].alive.remote(), timeout=60))
        except Exception:  # noqa: BLE001  (the actor itself is gone)
            return False


def _cause(e: BaseException) -> str:
    """The message of the error a Ray task raised (RayTaskError wraps it), else the error's own."""
    cause = getattr(e, "cause", None)
    return str(cause if cause is not None else e).strip().splitlines()[-1][:500]
