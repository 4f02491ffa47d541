"""Process groups: the torchrun helper and the CFG group that every other part receives explicitly."""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

from ._errors import RankFailedError, RankTimeoutError, SetupError

__all__ = ["CFGGroup", "DEFAULT_TIMEOUT", "init_distributed"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)

# torch 2.13 renamed the all-gathers (the old names are deprecated there, the new ones missing before).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_traceable_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_autograd_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def init_distributed(backend: str | None = None, *, timeout: datetime.timedelta | None = None) -> torch.device:
    """Initialize the default process group from torchrun's environment and return this rank's device.

    Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set) it picks NCCL and
    ``cuda:LOCAL_RANK`` when CUDA is available, gloo and the CPU otherwise, sets the current CUDA
    device, and initializes the default group. Without torchrun's variables it initializes nothing
    and returns ``cuda`` (or ``cpu``), so one script serves one process and many. When the default
    group already exists it only returns the device.

    Args:
        backend: force a backend (``"nccl"``, ``"gloo"``, ``"cpu:gloo,cuda:nccl"``).
        timeout: the default group's timeout (torch's default when ``None``).

    Returns:
        The device this rank's pipeline belongs on.

    Example:
        >>> import xcfg
        >>> device = xcfg.init_distributed()   # no torchrun here: nothing is initialized
        >>> device.type in {"cpu", "cuda"}
        True
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if dist.is_available() and not dist.is_initialized() and "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        backend = backend or ("nccl" if cuda else "gloo")
        kwargs: dict[str, Any] = {"backend": backend}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if cuda and "nccl" in backend:
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return device


@dataclass(frozen=True, eq=False)
class CFGGroup:
    """The ranks that share one pipeline's CFG batch, with a data plane and a control plane.

    Create it with :meth:`create` (from the default process group) or :meth:`from_group`, or let
    :func:`xcfg.parallelize` do it. It is passed explicitly to everything that communicates; xcfg
    keeps no global group.

    Attributes:
        group: the process group that carries tensors (the user's backend, xcfg's timeout); ``None``
            when ``size == 1``.
        control: a gloo group over the same ranks for small control messages, bounded by ``timeout``.
        rank: this process's rank within the group.
        size: the number of ranks in the group (the CFG degree).
        ranks: the global ranks of the group, in group order.
        timeout: how long a rank waits for its peers before raising :class:`xcfg.RankTimeoutError`.

    Example:
        >>> import xcfg
        >>> group = xcfg.CFGGroup.single()     # what a process without a process group gets
        >>> group.size, group.rank
        (1, 0)
    """

    group: Any
    control: Any
    rank: int
    size: int
    ranks: tuple[int, ...]
    timeout: datetime.timedelta = DEFAULT_TIMEOUT
    _owned: list[Any] = field(default_factory=list, repr=False)

    # -- construction --------------------------------------------------------------------------------

    @classmethod
    def single(cls) -> CFGGroup:
        """A group of one: no communication, everything runs locally."""
        return cls(group=None, control=None, rank=0, size=1, ranks=(0,))

    @classmethod
    def create(cls, degree: int = 2, *, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> CFGGroup:
        """Split the default process group into CFG groups of ``degree`` consecutive ranks.

        With 4 ranks and degree 2, ranks 0-1 and 2-3 each form a group (two pipelines, each on 2 GPUs).
        Without a process group, or with a world of one, it returns :meth:`single`.

        Args:
            degree: ranks per group; 2 for the uncond/cond pair.
            timeout: bound on every wait for a peer.

        Raises:
            SetupError: the world size is not a multiple of ``degree``.
        """
        if degree < 1:
            raise SetupError(f"degree must be at least 1, got {degree}")
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls.single()
        world, rank = dist.get_world_size(), dist.get_rank()
        check_world_size(world, degree)
        if degree == 1:
            return cls.single()
        first = rank - rank % degree
        return cls._build(tuple(range(first, first + degree)), None, timeout)

    @classmethod
    def from_group(cls, group: Any, *, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> CFGGroup:
        """Use an existing process group (every rank of which is a CFG rank) as the data plane.

        Args:
            group: a ``torch.distributed.ProcessGroup`` this rank belongs to.
            timeout: bound on every wait for a peer.
        """
        ranks = tuple(dist.get_process_group_ranks(group))
        if dist.get_rank() not in ranks:
            raise SetupError(f"this rank ({dist.get_rank()}) is not in the CFG group {list(ranks)}")
        if len(ranks) == 1:
            return cls.single()
        return cls._build(ranks, group, timeout)

    @classmethod
    def _build(cls, ranks: tuple[int, ...], data: Any, timeout: datetime.timedelta) -> CFGGroup:
        owned = []
        if data is None:
            data = dist.new_group(list(ranks), timeout=timeout, use_local_synchronization=True)
            owned.append(data)
        control = dist.new_group(list(ranks), backend="gloo", timeout=timeout, use_local_synchronization=True)
        owned.append(control)
        rank = ranks.index(dist.get_rank())
        return cls(group=data, control=control, rank=rank, size=len(ranks), ranks=ranks, timeout=timeout, _owned=owned)

    def destroy(self) -> None:
        """Destroy the process groups this object created (never the user's)."""
        for pg in self._owned:
            try:
                dist.destroy_process_group(pg)
            except Exception:  # the default group may be gone already
                pass
        self._owned.clear()

    # -- data plane ----------------------------------------------------------------------------------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in group order.

        Uses traceable functional collectives under ``torch.compile`` and autograd-aware ones when the
        tensor requires a gradient.
        """
        tensor = tensor.contiguous()
        if tensor.requires_grad and torch.is_grad_enabled():
            return _autograd_all_gather(tensor, 0, self.group)
        if torch.compiler.is_compiling():
            return _traceable_all_gather(tensor, 0, self.group)
        out = tensor.new_empty((tensor.shape[0] * self.size, *tensor.shape[1:]))
        self._control_call(lambda: _all_gather_single(out, tensor, group=self.group), "the output all-gather")
        return out

    def gather_to_root(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same shape everywhere) on rank 0 of the group, in group order; ``None``
        on the other ranks."""
        tensor = tensor.contiguous()
        chunks = [torch.empty_like(tensor) for _ in range(self.size)] if self.rank == 0 else None
        self._control_call(lambda: dist.gather(tensor, chunks, group=self.group, group_dst=0), "a gather to rank 0")
        return chunks

    # -- control plane -------------------------------------------------------------------------------

    def exchange(self, header: Sequence[int], where: str) -> list[list[int]]:
        """All-gather a fixed-size integer header over the control plane.

        Raises:
            RankTimeoutError: a peer did not arrive within ``timeout``.
            RankFailedError: a peer's process went away.
        """
        return self.post(header, where)()

    def post(self, header: Sequence[int], where: str) -> Callable[[], list[list[int]]]:
        """Start the all-gather of :meth:`exchange` and return a function that waits for its result.

        The gloo work proceeds in the background, so a rank can post its header before computing and
        collect the peers' headers afterwards, without a rendezvous in between.
        """
        mine = torch.tensor(list(header), dtype=torch.int64)
        out = torch.empty(self.size * mine.numel(), dtype=torch.int64)
        work = self._control_call(lambda: _all_gather_single(out, mine, group=self.control, async_op=True), where)

        def wait() -> list[list[int]]:
            self._control_call(work.wait, where)
            return out.view(self.size, -1).tolist()

        return wait

    def gather_objects(self, obj: Any, where: str) -> list[Any]:
        """All-gather a picklable object over the control plane (only after headers agreed)."""
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        sizes = self.exchange([payload.numel()], where)
        longest = max(s[0] for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: payload.numel()] = payload
        out = torch.empty(self.size * longest, dtype=torch.uint8)
        self._control_call(lambda: _all_gather_single(out, buf, group=self.control), where)
        rows = out.view(self.size, longest)
        return [pickle.loads(rows[r, : sizes[r][0]].numpy().tobytes()) for r in range(self.size)]

    def _control_call(self, fn: Any, where: str) -> Any:
        """Run a collective; turn a timeout or a lost peer into the matching :class:`xcfg.RankError`."""
        try:
            return fn()
        except RuntimeError as err:
            text = str(err)
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise RankTimeoutError(
                    f"xcfg: rank {self.rank} of the CFG group {list(self.ranks)} waited {self.timeout} at {where} "
                    "and a peer did not arrive. The peer is stuck, left the pipeline early, or failed without "
                    "reaching xcfg; see its log. Raise the timeout with parallelize(..., timeout=...) if it is "
                    "legitimately slower."
                ) from err
            raise RankFailedError(
                f"xcfg: lost a peer of the CFG group {list(self.ranks)} at {where} (its process probably exited): {text}"
            ) from err


def backend_for(group: Any, device: torch.device) -> str | None:
    """The backend ``group`` (``None``: the default group) uses for tensors on ``device``, or ``None``.

    Handles single backends (``"nccl"``) and per-device maps (``"cpu:gloo,cuda:nccl"``).
    """
    name = str(dist.get_backend(group)).lower()
    if ":" not in name:
        return name
    for part in name.split(","):
        dev, _, backend = part.partition(":")
        if dev.strip() == device.type:
            return backend.strip()
    return None


def check_world_size(world: int, degree: int) -> None:
    """Refuse a world size that ``degree`` does not divide.

    Raises:
        SetupError: with what to launch instead.
    """
    if world % degree:
        raise SetupError(
            f"xcfg: the world size {world} is not a multiple of the CFG degree {degree}: each CFG group needs "
            f"{degree} ranks. Launch {world - world % degree or degree} or {world + degree - world % degree} "
            f"processes (torchrun --nproc-per-node {degree}), or pass degree=1 to run without CFG parallelism."
        )
