"""Peak memory and foreign CPU use of a process tree, sampled in the background (benchmarks/throughput.py)."""

from __future__ import annotations

import ctypes
import gc
import threading
import time


class PeakMemory:
    """Background sampler of this process and all its descendants: the largest memory sums, and the CPU time they
    used, so that CPU used by *other* processes during a run (a disturbed timing) can be told apart."""

    def __init__(self, interval: float = 0.25, refresh: float = 2.0):
        import psutil

        self.psutil, self.interval, self.refresh = psutil, interval, refresh
        self.root = psutil.Process()
        self.peak_pss = self.peak_rss = 0
        self.max_processes = 0
        self.cpu_seen: dict[int, float] = {}  # pid -> its largest user+system CPU seconds seen during the run
        self.other_cpu_cores: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def sample(self, procs) -> tuple[int, int]:
        pss = rss = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()  # /proc/PID/smaps_rollup: cheap
                times = proc.cpu_times()
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            pss += info.pss
            rss += info.rss
            self.cpu_seen[proc.pid] = max(self.cpu_seen.get(proc.pid, 0.0), times.user + times.system)
        return pss, rss

    def _processes(self):
        try:
            return [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return [self.root]

    def _busy_seconds(self) -> float:
        t = self.psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def _run(self) -> None:
        procs, listed = self._processes(), time.monotonic()
        while True:
            if time.monotonic() - listed > self.refresh:
                procs, listed = self._processes(), time.monotonic()
            pss, rss = self.sample(procs)
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.max_processes = max(self.max_processes, len(procs))
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> PeakMemory:
        self._start = (time.monotonic(), self._busy_seconds())
        self._own_before = {p.pid: v for p in self._processes() for v in [self._cpu(p)] if v is not None}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        pss, rss = self.sample(self._processes())  # one last look, after the final iteration
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        wall, busy = time.monotonic() - self._start[0], self._busy_seconds() - self._start[1]
        own = sum(v - self._own_before.get(pid, 0.0) for pid, v in self.cpu_seen.items())
        self.other_cpu_cores = max(0.0, busy - own) / wall if wall > 0 else None

    def _cpu(self, proc) -> float | None:
        try:
            times = proc.cpu_times()
        except self.psutil.Error:
            return None
        return times.user + times.system


def release_memory() -> None:
    """Between systems: collect garbage and hand freed heap back to the OS, so the next one starts lean."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
