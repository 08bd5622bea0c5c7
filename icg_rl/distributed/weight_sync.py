"""Weight sync on the device (docs/architecture.md §8, `ray.weight_sync`): learner rank 0's trainable weights reach
the rollout actors without the object store.

    form_weight_group(mode, learner_rank0, rollout_actors)     # once, and again after a rollout actor restarted
    nbytes = push_weights(mode, learner_rank0, rollout_actors, version)   # after every update

- `collective`: a process group made for the purpose — learner rank 0 is its rank 0, the rollout actors 1..N —
  rendezvousing through its own torch TCPStore, so it lives beside the learners' DeepSpeed world instead of inside
  it (as veRL's and OpenRLHF's weight-update groups do). A sync is one broadcast of one flat buffer: NCCL between
  GPUs, gloo on CPUs.
- `cuda_ipc`: learner and rollout actors share one GPU (fractional `ray.*_gpus`). The learner packs its weights
  into one flat CUDA buffer whose IPC handle every rollout actor opened once; a sync is a device-to-device copy on
  each side and a Ray call to say when.

Both check, when the group forms, that every member lays the weights out identically (names, shapes, dtypes), and
keep the version rule of `weights.VersionedWeights`: an actor never moves back to older weights.
"""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta

import torch

MODES = ("collective", "cuda_ipc")
GROUP_TIMEOUT = timedelta(seconds=300)  # a member that never arrives fails the sync instead of hanging it forever


def weights_layout(named: dict[str, torch.nn.Parameter]) -> str:
    """A short hash of the parameters' names, shapes and dtypes, in order: members must agree on it."""
    text = ";".join(f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in named.items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FlatWeights:
    """The trainable parameters and one flat buffer that holds all of them (one message instead of hundreds).
    The buffer has the parameters' dtype, which must be one dtype (the trainable ICG weights are fp32)."""

    def __init__(self, named: dict[str, torch.nn.Parameter], device: torch.device):
        self.params = list(named.values())
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ValueError(f"weight sync over a group needs one dtype for every trainable parameter, got "
                             f"{sorted(map(str, dtypes))}; use ray.weight_sync=object_store")
        self.buffer = torch.empty(sum(p.numel() for p in self.params), dtype=dtypes.pop(), device=device)
        self.views, offset = [], 0
        for p in self.params:
            self.views.append(self.buffer[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    @torch.no_grad()
    def pack(self) -> torch.Tensor:
        torch._foreach_copy_(self.views, [p.detach() for p in self.params])
        return self.buffer

    @torch.no_grad()
    def unpack(self) -> None:
        torch._foreach_copy_(self.params, self.views)


class BroadcastGroup:
    """One member of a broadcast group with its own rendezvous (not torch.distributed's default group)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device):
        import torch.distributed as dist

        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=GROUP_TIMEOUT)
        store = dist.PrefixStore("icg_rl/weights", store)
        if device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, dist.ProcessGroupNCCL.Options())
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, GROUP_TIMEOUT)
        self.store = store  # the TCPStore's server lives in rank 0's object: keep it for the group's lifetime
        self.rank, self.world_size = rank, world_size

    def broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        self.group.broadcast([tensor], options).wait()

    def close(self) -> None:
        try:
            self.group.shutdown()
        except (RuntimeError, AttributeError):  # an aborted or already shut group: nothing left to release
            pass


class WeightGroupMember:
    """Mixed into LearnerWorker (rank 0 sends) and RolloutWorker (receives); both hold `self.pipe`."""

    _weight_group: BroadcastGroup | None = None
    _flat: FlatWeights | None = None
    _shared: torch.Tensor | None = None  # cuda_ipc: the learner's buffer, opened in this process

    def join_weight_group(self, mode: str, host: str, port: int, rank: int, world_size: int) -> str:
        """Allocate the flat buffer and, for `collective`, join the group (blocks until all members arrive);
        returns this member's weights layout."""
        if mode not in MODES:
            raise ValueError(f"ray.weight_sync: {mode!r} is not a group mode; choose from {', '.join(MODES)}")
        if self._weight_group is not None:
            self._weight_group.close()
            self._weight_group = None
        named = self.pipe.trainable_named_parameters()
        self._flat = FlatWeights(named, self.pipe.device)
        if mode == "collective":
            self._weight_group = BroadcastGroup(host, port, rank, world_size, self.pipe.device)
        elif self.pipe.device.type != "cuda":
            raise ValueError(f"ray.weight_sync=cuda_ipc needs GPU actors (this one runs on {self.pipe.device}); "
                             f"set ray.rollout_gpus and ray.learner_gpus, or use weight_sync=collective")
        return weights_layout(named)

    def send_weights(self) -> int:
        """Learner rank 0: its weights into the flat buffer, broadcast (collective) or left for the rollout actors
        to copy (cuda_ipc, synchronized first). Returns the bytes synced."""
        buffer = self._flat.pack()
        if self._weight_group is not None:
            self._weight_group.broadcast(buffer)
        elif buffer.is_cuda:
            torch.cuda.synchronize(buffer.device)
        return self._flat.nbytes

    def ipc_handle(self):
        """Learner rank 0 (cuda_ipc): what another process on the same GPU needs to open the flat buffer."""
        from torch.multiprocessing.reductions import reduce_tensor

        return reduce_tensor(self._flat.buffer)

    def open_ipc(self, handle) -> None:
        rebuild, args = handle
        self._shared = rebuild(*args)

    def receive_weights(self, version: int) -> float:
        """Rollout actor: take part in the sync of `version` and load it unless already held; returns ms."""
        start = time.perf_counter()
        if self._weight_group is not None:
            self._weight_group.broadcast(self._flat.buffer)  # a collective: every member joins, loading or not
        elif self._shared is not None:
            self._flat.buffer.copy_(self._shared)
            torch.cuda.synchronize(self._flat.buffer.device)
        else:
            raise RuntimeError("receive_weights: this actor is in no weight group; form_weight_group first")
        if self.weights.accept(version):
            self._flat.unpack()
        return (time.perf_counter() - start) * 1e3


def form_weight_group(mode: str, source, receivers: list) -> None:
    """Make (or remake) the group of learner rank 0 (`source`, an actor with `node_address`) and the rollout
    actors; fails naming the members whose weights are laid out differently."""
    import ray

    host, port = ray.get(source.node_address.remote())
    size = 1 + len(receivers)
    layouts = ray.get([source.join_weight_group.remote(mode, host, port, 0, size)]
                      + [actor.join_weight_group.remote(mode, host, port, rank, size)
                         for rank, actor in enumerate(receivers, start=1)])
    differing = [i for i, layout in enumerate(layouts[1:], start=1) if layout != layouts[0]]
    if differing:
        raise ValueError(f"ray.weight_sync={mode}: rollout actor(s) {differing} lay out the trainable weights "
                         f"differently from the learner (layout {layouts[0]} vs {layouts[differing[0]]}); rollout "
                         f"and learner must be built from the same config")
    if mode == "cuda_ipc":
        handle = ray.get(source.ipc_handle.remote())
        ray.get([actor.open_ipc.remote(handle) for actor in receivers])


def push_weights(mode: str, source, receivers: list, version: int) -> int:
    """Learner rank 0's current weights → every rollout actor as `version`; returns the bytes synced."""
    import ray

    if mode == "collective":  # all members enter the broadcast together
        sizes = ray.get([source.send_weights.remote()] + [a.receive_weights.remote(version) for a in receivers])
        return int(sizes[0])
    size = ray.get(source.send_weights.remote())  # cuda_ipc: the buffer is written (and synchronized) first
    ray.get([actor.receive_weights.remote(version) for actor in receivers])
    return int(size)
