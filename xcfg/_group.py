"""Process groups: the torchrun helper, the CFG group that every other part receives explicitly, and the
sequence group of context parallelism. Every collective of xcfg goes through an object of this module;
nothing else calls ``torch.distributed`` but to build the mesh and to make and destroy groups."""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

from ._errors import RankError, RankFailedError, RankMismatchError, RankTimeoutError, SetupError

__all__ = ["CFGGroup", "DEFAULT_TIMEOUT", "SequenceGroup", "init_distributed", "mesh_group"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=5)

# torch 2.13 renamed the all-gathers (the old names are deprecated there, the new ones missing before).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_traceable_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_autograd_all_gather = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd

# A data collective's guard: a control-plane row in the format of the session's headers
# ([tag, run, call, value, flags, aux], see xcfg._session), posted by every rank as it enters the collective.
GUARD_TAG = 9
_FAILED = 1
_ALL_GATHER, _GATHER_TO_ROOT = 0, 1
_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
           torch.bool, torch.int8, torch.int16, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2]

_pool: dict[tuple[Any, ...], CFGGroup] = {}
_pool_lock = threading.Lock()


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
        label: what the group is called in error messages: ``"CFG group"``, or ``"mesh group"`` for the
            group over every rank of a layout that splits the VAE decode.

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
    label: str = "CFG group"
    _owned: list[Any] = field(default_factory=list, repr=False)
    _health: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        if not isinstance(degree, int) or degree < 1:
            raise SetupError(f"xcfg: degree must be a whole number of ranks, at least 1 (2 for CFG), not {degree!r}")
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
    def _build(
        cls, ranks: tuple[int, ...], data: Any, timeout: datetime.timedelta, label: str = "CFG group"
    ) -> CFGGroup:
        """The pooled group for these ranks, timeout and data group, made on first use.

        Groups are pooled per default process group, ranks, timeout and (when given) the user's data group,
        not destroyed at ``remove()``: creating and destroying gloo groups in quick succession leaks
        descriptors, and a ``new_group`` right after a ``destroy_process_group`` of the same ranks can fail
        to connect (its peers may still be tearing the old mesh down). A pooled group is reused by the next
        ``parallelize`` on the same ranks, so any number of ``parallelize``/``remove`` cycles holds at most
        one pair of groups per key. A group that became unusable (a timeout, a lost peer) leaves the pool.
        """
        key = (id(dist.distributed_c10d._get_default_group()), ranks, timeout, None if data is None else id(data), label)
        with _pool_lock:
            pooled = _pool.get(key)
            alive = pooled is not None and pooled.control in dist.distributed_c10d._world.pg_map
            if alive and pooled.broken is None and (data is None or pooled.group is data):
                return pooled
        rank = ranks.index(dist.get_rank())
        owned = []
        try:
            if data is None:
                data = dist.new_group(list(ranks), timeout=timeout, use_local_synchronization=True)
                owned.append(data)
            control = dist.new_group(list(ranks), backend="gloo", timeout=timeout, use_local_synchronization=True)
        except RuntimeError as err:
            raise RankTimeoutError(
                f"xcfg: rank {rank} (global rank {dist.get_rank()}) could not form the {label} {list(ranks)} in "
                f"parallelize(): a peer did not join ({err}). Every rank of the group must call parallelize() with "
                "the same arguments (degree, group, true_cfg): a rank that was refused, or that computed another "
                "group, never arrives. See the other ranks' logs for a refusal."
            ) from err
        owned.append(control)
        made = cls(group=data, control=control, rank=rank, size=len(ranks), ranks=ranks, timeout=timeout, label=label,
                   _owned=owned)
        with _pool_lock:
            _pool[key] = made
        return made

    def destroy(self) -> None:
        """Destroy the process groups this object created (never the user's), and drop it from the pool."""
        with _pool_lock:
            for key, pooled in list(_pool.items()):
                if pooled is self:
                    del _pool[key]
        for pg in self._owned:
            try:
                dist.destroy_process_group(pg)
            except Exception:  # the default group may be gone already
                pass
        self._owned.clear()

    # -- health --------------------------------------------------------------------------------------

    @property
    def broken(self) -> str | None:
        """Why this group can no longer be used (a wait timed out, a peer was lost), or ``None``.

        A gloo or NCCL collective that timed out on one rank is still pending on the others, so the ranks
        are no longer in step on that group and no later collective can pair up correctly. xcfg does not
        try to resynchronize it: every later use raises at once, saying so, and the next
        :func:`xcfg.parallelize` on these ranks makes a fresh group.
        """
        return self._health.get("broken")

    def describe_rank(self, rank: int) -> str:
        """``"rank 1 (global rank 3)"``: a rank of this group with its global rank."""
        return f"rank {rank} (global rank {self.ranks[rank]})"

    def _check_usable(self, where: str) -> None:
        reason = self.broken
        if reason is not None:
            raise RankFailedError(
                f"xcfg: the {self.label} {list(self.ranks)} cannot be used any more ({_during(where)}): {reason} A process group "
                "whose collective timed out or lost a peer cannot be put back in step. Call .remove() on the handle "
                "and xcfg.parallelize() again on every rank (a fresh group is made), or restart the processes."
            )

    # -- data plane ----------------------------------------------------------------------------------

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along dim 0, in group order.

        Uses traceable functional collectives under ``torch.compile`` and autograd-aware ones when the
        tensor requires a gradient.

        Outside a compiled graph and autograd, the collective is guarded: every rank posts a small row on
        the control plane as it enters, and checks every rank's row after it. A rank that fails before or
        inside the collective (out of memory allocating the gathered buffer, ...) stands in for it with
        zeros instead (``stand_in``), so every rank leaves the collective, sees the failure in the
        guard and raises at this collective: the failing rank its own error, the others
        :class:`xcfg.RankFailedError`.
        """
        tensor = tensor.contiguous()
        if torch.compiler.is_compiling():
            if tensor.requires_grad and torch.is_grad_enabled():
                return _autograd_all_gather(tensor, 0, self.group)
            return _traceable_all_gather(tensor, 0, self.group)
        where = self._health.get("at") or "the data all-gather of a split call"
        self._check_usable(where)
        if tensor.requires_grad and torch.is_grad_enabled():
            result: list[torch.Tensor] = []

            def gather() -> None:
                out = _autograd_all_gather(tensor, 0, self.group)
                trigger = getattr(out, "trigger_wait", None)
                result.append(trigger() if trigger is not None else out)

            self._guarded(tensor, _ALL_GATHER, gather, where)
            return result[0]
        out = tensor.new_empty((tensor.shape[0] * self.size, *tensor.shape[1:]))
        self._guarded(tensor, _ALL_GATHER, lambda: _all_gather_single(out, tensor, group=self.group), where)
        return out

    def gather_to_root(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``tensor`` (same shape everywhere) on rank 0 of the group, in group order; ``None``
        on the other ranks. Guarded like :meth:`all_gather`."""
        tensor = tensor.contiguous()
        where = self._health.get("at") or "a gather to rank 0"
        self._check_usable(where)
        chunks = [torch.empty_like(tensor) for _ in range(self.size)] if self.rank == 0 else None
        self._guarded(tensor, _GATHER_TO_ROOT, lambda: dist.gather(tensor, chunks, group=self.group, group_dst=0), where)
        return chunks

    @contextlib.contextmanager
    def labelled(self, where: str) -> Iterator[None]:
        """Name the data collectives run inside the block in error messages (``where`` they happen)."""
        previous = self._health.get("at")
        self._health["at"] = where
        try:
            yield
        finally:
            self._health["at"] = previous

    def _guarded(self, tensor: torch.Tensor, kind: int, collective: Callable[[], Any], where: str) -> None:
        self._health["device"] = tensor.device
        code = _DTYPES.index(tensor.dtype) * 2 + kind if tensor.dtype in _DTYPES else -1
        guard = self.post([GUARD_TAG, 0, 0, tensor.numel(), 0, code], where)
        self._control_call(collective, where, data=True)
        rows = guard()
        failed = [r for r, row in enumerate(rows) if row[4] & _FAILED]
        if failed:
            messages = self.gather_objects(None, where)
            first = failed[0]
            raise RankFailedError(
                f"xcfg: {self.describe_rank(first)} of the {self.label} {list(self.ranks)} failed {_during(where)}: "
                f"{messages[first]}. It stood in for the collective with zeros, so this rank ({self.describe_rank(self.rank)}) "
                "left it and stopped at the same point; nothing is left waiting.",
                rank=first,
            )
        if any(row != rows[0] for row in rows):
            raise RankMismatchError(
                f"xcfg: the ranks of the {self.label} {list(self.ranks)} entered different data collectives {_during(where)} "
                f"(each rank's size and dtype code: {[(row[3], row[5]) for row in rows]}).",
                rank=next(r for r, row in enumerate(rows) if row != rows[0]),
            )

    def stand_in(self, error: BaseException, where: str) -> NoReturn:
        """This rank failed before or inside a data collective: release the peers, then raise everywhere.

        The peers may be inside the collective (waiting for this rank) or in a control-plane round. This
        rank posts a failed guard row, which the peers meet either way: peers inside a guarded collective
        posted their guard rows on entering, so this rank learns the collective's size and dtype from them
        and enters it with zeros, which lets them out; then every rank exchanges error messages, this rank
        raises ``error`` (with the others' failures as notes), the peers raise
        :class:`xcfg.RankFailedError`. Peers in a control-plane round see the failed row there and raise.

        When the stand-in itself fails (it allocates the gathered size again), the group is marked
        unusable, the peers are left to the data group's timeout, and ``error`` is raised.
        """
        if self.broken is not None:
            error.add_note(f"xcfg: the {self.label} was already unusable: {self.broken}")
            raise error
        rows = self.post([GUARD_TAG, 0, 0, 0, _FAILED, -1], where)()
        inside = [row for row in rows if row[0] == GUARD_TAG and not row[4] & _FAILED]
        if inside:
            numel, code = inside[0][3], inside[0][5]
            try:
                if code < 0:
                    raise TypeError("the collective's dtype has no code in xcfg's guard rows")
                dtype = _DTYPES[code // 2]
                zeros = torch.zeros(numel, dtype=dtype, device=self._data_device())
                if code % 2 == _ALL_GATHER:
                    out = zeros.new_empty(numel * self.size)
                    _all_gather_single(out, zeros, group=self.group)
                else:
                    chunks = [torch.empty_like(zeros) for _ in range(self.size)] if self.rank == 0 else None
                    dist.gather(zeros, chunks, group=self.group, group_dst=0)
            except BaseException as join_error:
                self._health["broken"] = (
                    f"{self.describe_rank(self.rank)} failed {_during(where)} and could not enter the collective with "
                    f"placeholder data ({type(join_error).__name__}: {join_error}), so its peers were left inside it."
                )
                error.add_note(f"xcfg: {self._health['broken']}")
                raise error
        messages = self.gather_objects(_summary(error), where)
        for r, row in enumerate(rows):
            if r != self.rank and row[4] & _FAILED:
                error.add_note(f"xcfg: {self.describe_rank(r)} of the {self.label} failed too: {messages[r]}")
        raise error

    def _data_device(self) -> torch.device:
        device = self._health.get("device")
        if device is not None:
            return device
        if "nccl" in str(dist.get_backend(self.group)).lower() and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

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
        self._check_usable(where)
        mine = torch.tensor(list(header), dtype=torch.int64)
        out = torch.empty(self.size * mine.numel(), dtype=torch.int64)
        started = time.monotonic()
        work = self._control_call(lambda: _all_gather_single(out, mine, group=self.control, async_op=True), where)

        def wait() -> list[list[int]]:
            self._control_call(work.wait, where, started=started)
            return out.view(self.size, -1).tolist()

        return wait

    def gather_objects(self, obj: Any, where: str) -> list[Any]:
        """All-gather a picklable object over the control plane (only after headers agreed)."""
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        if payload.numel() == 0:  # pragma: no cover - pickle never returns nothing
            payload = torch.zeros(1, dtype=torch.uint8)
        sizes = self.exchange([payload.numel()], where)
        longest = max(s[0] for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: payload.numel()] = payload
        out = torch.empty(self.size * longest, dtype=torch.uint8)
        self._control_call(lambda: _all_gather_single(out, buf, group=self.control), where)
        rows = out.view(self.size, longest)
        return [pickle.loads(rows[r, : sizes[r][0]].numpy().tobytes()) for r in range(self.size)]

    def _control_call(self, fn: Any, where: str, *, started: float | None = None, data: bool = False) -> Any:
        """Run a collective; turn a timeout or a lost peer into the matching :class:`xcfg.RankError`.

        Either leaves the group unusable (see :attr:`broken`): every later use raises at once instead of
        waiting again.
        """
        started = time.monotonic() if started is None else started
        try:
            return fn()
        except RuntimeError as err:
            if isinstance(err, RankError):
                raise
            text = str(err)
            waited = time.monotonic() - started
            me = f"{self.describe_rank(self.rank)} of the {self.label} {list(self.ranks)}"
            plane = "data" if data else "control"
            if _timed_out(err):
                self._health["broken"] = f"a wait on its {plane} plane timed out {_during(where)}."
                raise RankTimeoutError(
                    f"xcfg: {me} waited {waited:.1f} s (the timeout is {self.timeout.total_seconds():g} s) "
                    f"{_during(where)} and a peer did not arrive. The peer is stuck, left the pipeline early, or failed "
                    "without reaching xcfg; see its log. Raise the timeout with parallelize(..., timeout=...) if it is "
                    "legitimately slower. This group cannot be used again: remove() and parallelize() make a new one."
                ) from err
            self._health["broken"] = f"the connection to a peer broke {_during(where)}."
            raise RankFailedError(
                f"xcfg: {me} lost the connection to a peer {_during(where)} after {waited:.1f} s: the peer's process "
                "exited, or the peer gave up waiting for this rank (its timeout passed first) and closed the connection; "
                f"see its log ({text}). This group cannot be used again: remove() and parallelize() make a new one."
            ) from err


def _timed_out(err: BaseException) -> bool:
    """Whether a backend's ``RuntimeError`` says a wait timed out (gloo and NCCL say so in the message only)."""
    text = str(err).lower()
    return "timed out" in text or "timeout" in text


def mesh_group(ranks: Sequence[int], *, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> CFGGroup:
    """A group over every rank of a layout (labelled ``"mesh group"``), for the work all of them share after the
    denoising loop: the split VAE decode. Its own data and control groups, made with ``new_group`` by these
    ranks only; :meth:`CFGGroup.destroy` destroys them.

    Raises:
        RankTimeoutError: a rank of ``ranks`` did not join.
    """
    return CFGGroup._build(tuple(ranks), None, timeout, label="mesh group")


@dataclass(frozen=True, eq=False)
class SequenceGroup:
    """The ranks that share one sequence under context parallelism: the mesh's flattened ring x ulysses dim.

    diffusers runs its own attention collectives on this group, inside its hooks. What xcfg itself does
    on it goes through this object: the share of a tensor that is this rank's (:meth:`share`, which the
    plugins reach through :func:`xcfg.sequence_share`) and the padded gather of uneven outputs
    (:meth:`all_gather_uneven`). It has no control plane: a peer that fails inside diffusers' attention
    is seen as the group's timeout (see the layouts guide, "Faults").

    Attributes:
        group: the process group; ``None`` when ``size == 1``.
        rank: this process's rank within the group (its place along the sequence).
        size: the number of ranks that share the sequence (ring degree x ulysses degree).

    Example:
        >>> import torch
        >>> from xcfg._group import SequenceGroup
        >>> SequenceGroup.single().share(torch.arange(5), 0).tolist()   # one rank holds the whole sequence
        [0, 1, 2, 3, 4]
    """

    group: Any
    rank: int
    size: int

    @classmethod
    def single(cls) -> SequenceGroup:
        """A sequence held whole by one rank."""
        return cls(group=None, rank=0, size=1)

    @classmethod
    def from_group(cls, group: Any) -> SequenceGroup:
        """The sequence group of a ``torch.distributed`` process group this rank belongs to."""
        size = dist.get_world_size(group)
        return cls(group=group, rank=dist.get_rank(group), size=size) if size > 1 else cls.single()

    @classmethod
    def of(cls, config: Any) -> SequenceGroup:
        """The sequence group of a diffusers ``ParallelConfig`` (what a model or an attention processor holds
        as ``_parallel_config``) or ``ContextParallelConfig`` once ``enable_parallelism`` set it up;
        :meth:`single` for ``None`` or a config without context parallelism."""
        context = getattr(config, "context_parallel_config", config)
        mesh = getattr(context, "_flattened_mesh", None) if context is not None else None
        return cls.single() if mesh is None else cls.from_group(mesh.get_group())

    def share(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's part of ``tensor`` along ``dim``: ``tensor.tensor_split(size, dim)[rank]`` (uneven
        lengths give the larger parts to the lower ranks, as diffusers' "anything" modes split them)."""
        return tensor if self.size == 1 else tensor.tensor_split(self.size, dim=dim)[self.rank]

    def all_gather_uneven(
        self, tensor: torch.Tensor, dim: int, *, where: str = "a context-parallel gather"
    ) -> torch.Tensor:
        """Concatenate every rank's ``tensor`` along ``dim`` in rank order, where the lengths along ``dim`` may
        differ: one all-gather of the lengths, one of the parts padded to the longest, trimmed after (gloo
        refuses an all-gather of different sizes, which diffusers' own gather of uneven parts uses).

        Raises:
            RankTimeoutError: a peer did not arrive within the group's timeout; the message names ``where``.
            RankFailedError: the connection to a peer broke.
        """
        if self.size == 1:
            return tensor
        dim = dim % tensor.dim()
        lengths = torch.empty(self.size, dtype=torch.int64, device=tensor.device)
        mine = torch.tensor([tensor.shape[dim]], dtype=torch.int64, device=tensor.device)
        self._call(lambda: _all_gather_single(lengths, mine, group=self.group), where)
        sizes = lengths.tolist()
        longest = max(sizes)
        moved = tensor.movedim(dim, 0)
        if moved.shape[0] < longest:
            moved = torch.cat([moved, moved.new_zeros((longest - moved.shape[0], *moved.shape[1:]))])
        out = moved.new_empty((self.size * longest, *moved.shape[1:]))
        self._call(lambda: _all_gather_single(out, moved.contiguous(), group=self.group), where)
        return torch.cat([out[r * longest : r * longest + n] for r, n in enumerate(sizes)]).movedim(0, dim)

    def _call(self, fn: Callable[[], Any], where: str) -> Any:
        """Run a collective; turn a timeout or a lost peer into the matching :class:`xcfg.RankError`, naming
        ``where`` and the group's global ranks."""
        started = time.monotonic()
        try:
            return fn()
        except RuntimeError as err:
            if isinstance(err, RankError):
                raise
            ranks = list(dist.get_process_group_ranks(self.group))
            me = f"rank {self.rank} (global rank {ranks[self.rank]}) of the sequence group {ranks}"
            waited = time.monotonic() - started
            if _timed_out(err):
                raise RankTimeoutError(
                    f"xcfg: {me} waited {waited:.1f} s {_during(where)} and a peer did not arrive: the peer is stuck or "
                    "failed (inside the model, where diffusers' attention has no way to tell its peers); see its log."
                ) from err
            raise RankFailedError(
                f"xcfg: {me} lost the connection to a peer {_during(where)} after {waited:.1f} s: the peer's process "
                f"exited or gave up waiting; see its log ({err})."
            ) from err


def is_initialized() -> bool:
    """Whether the default process group exists. No collective."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """The ranks of ``group`` (``None``: the default group); 1 without an initialized process group. No collective."""
    if group is None and not is_initialized():
        return 1
    return dist.get_world_size(group)


def backend_name(group: Any = None) -> str:
    """The backend of ``group`` (``None``: the default group) as torch names it: ``"nccl"``, ``"cpu:gloo,cuda:nccl"``."""
    return str(dist.get_backend(group))


def _during(where: str) -> str:
    """``where`` as a phrase after a verb: "at denoiser call 3 ..." stays, "the VAE gather" gets "during"."""
    if where.startswith(("at ", "in ", "during ", "while ", "starting ", "ending ", "finishing ", "verifying ")):
        return where
    return f"during {where}"


def _summary(error: BaseException | None) -> str | None:
    if error is None:
        return None
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


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
    if degree > world:
        raise SetupError(
            f"xcfg: the CFG degree {degree} is larger than the world size {world}: each CFG group needs {degree} "
            f"ranks. Launch {degree} processes per group (torchrun --nproc-per-node {degree}), or pass a degree that "
            f"divides {world} (degree=2 for CFG, degree=1 to run without CFG parallelism)."
        )
    if world % degree:
        raise SetupError(
            f"xcfg: the world size {world} is not a multiple of the CFG degree {degree}: each CFG group needs "
            f"{degree} ranks. Launch {world - world % degree or degree} or {world + degree - world % degree} "
            f"processes (torchrun --nproc-per-node {degree}), or pass degree=1 to run without CFG parallelism."
        )
