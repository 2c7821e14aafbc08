"""Multi-part token list updates: the assembly state machine (pure; no I/O, the clock is passed in).

A token list larger than one MQTT message travels as parts under one `update_id`: every part repeats the update's
header (kind, version, base_version, parts) and carries its index `part` (0..parts-1) and a slice of the tokens.
The assembly decides, for each arriving part, what the staging adapter (gateway/uplink/tokenstaging.py) does:

- `Accept`: store the part (first of a new update: after dropping the update it replaces); `complete` = every part
  is now there and the list is to be applied.
- `Duplicate`: this exact part is already staged (same update id, index and content digest): nothing to store.
- `Replay`: the update already finished (applied or refused): its final result again.
- `Refuse`: an error result; nothing changes (unless `abandon` names the staged update this part made invalid).

Rules (docs/uplink.md, "Token lists in parts"): at most one update is staged at a time; a part of another update
id with a version >= the staged one replaces it (a newer version starts, or the eMSP restarted the same version),
an older one is refused; a staged update that has received no new part for `idle_timeout` seconds is abandoned.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

# Most parts one update may have: with 4 MiB messages that is far beyond the 2,000,000-token cap; it bounds the
# per-update bookkeeping (one digest per part) a peer can make us keep.
MAX_PARTS: Final = 4096
# Most tokens staged for one update (the token store's own cap, gateway.auth.tokens.MAX_LIST_TOKENS).
MAX_STAGED_TOKENS: Final = 2_000_000
# Most bytes staged on disk for one update: 2,000,000 tokens of ~40 bytes CBOR each with room to spare, small
# against an SD card, and a bound a misbehaving peer cannot exceed.
MAX_STAGED_BYTES: Final = 256 * 1024 * 1024
# A staged update that receives no new part for this long is abandoned and its parts deleted: an eMSP sending
# parts back to back finishes 1,000,000 tokens in seconds; ten minutes also covers a broker reconnect with backoff,
# while an eMSP that gave up does not leave megabytes on the gateway's disk for long.
STAGING_IDLE_TIMEOUT_S: Final = 600.0
# Finished updates whose final result is remembered for late duplicate parts (QoS 1 redelivery, eMSP retries).
FINISHED_KEPT: Final = 16


@dataclass(frozen=True, slots=True)
class PartHeader:
    """What every part of one update repeats; parts that disagree on it are inconsistent."""

    update_id: str
    kind: str
    version: int
    base_version: int | None
    parts: int

    def describe(self) -> str:
        base = f", base_version {self.base_version}" if self.base_version is not None else ""
        return f"{self.kind} version {self.version}{base} in {self.parts} parts"


@dataclass(frozen=True, slots=True)
class Part:
    header: PartHeader
    index: int
    tokens: int  # entries in this part
    size: int  # bytes staged for it
    digest: str  # content digest: a re-sent part must be identical


@dataclass(slots=True)
class Staged:
    header: PartHeader
    deadline: float  # monotonic: abandoned when no new part arrived by then
    digests: dict[int, str] = field(default_factory=dict)
    tokens: int = 0
    size: int = 0

    @property
    def received(self) -> int:
        return len(self.digests)

    @property
    def complete(self) -> bool:
        return len(self.digests) == self.header.parts


@dataclass(frozen=True, slots=True)
class Accept:
    complete: bool
    replaces: str | None = None  # update id of a staged update to drop first (a newer one started)


@dataclass(frozen=True, slots=True)
class Duplicate:
    complete: bool  # the update is complete but not finished (its apply failed): apply it again


@dataclass(frozen=True, slots=True)
class Replay:
    ok: bool
    result: dict[str, Any]  # ok: the result map; not ok: {"code", "message"}


@dataclass(frozen=True, slots=True)
class Refuse:
    code: str
    message: str
    abandon: str | None = None  # update id of the staged update this part made unusable


Decision = Accept | Duplicate | Replay | Refuse


@dataclass(frozen=True, slots=True)
class Limits:
    max_parts: int = MAX_PARTS
    max_tokens: int = MAX_STAGED_TOKENS
    max_differential_tokens: int = MAX_STAGED_TOKENS
    max_bytes: int = MAX_STAGED_BYTES
    idle_timeout: float = STAGING_IDLE_TIMEOUT_S


class Assembly:
    """At most one staged update plus the final results of the last few finished ones. `decide` never changes
    state; the adapter calls `accepted` after the part is on disk, `finished` after the apply, `abandon` after
    deleting a staged update."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.staged: Staged | None = None
        self.finished: OrderedDict[str, tuple[PartHeader, Replay]] = OrderedDict()

    # -- queries ----------------------------------------------------------------------------------------------
    def expired(self, now: float) -> str | None:
        """The update id of a staged update past its idle deadline (the adapter deletes it, then abandon())."""
        s = self.staged
        return s.header.update_id if s is not None and now >= s.deadline else None

    def decide(self, part: Part, applied_version: int | None, now: float) -> Decision:
        h = part.header
        lim = self.limits
        if not 1 <= h.parts <= lim.max_parts:
            return Refuse("invalid_args", f"parts: expected 1..{lim.max_parts}, got {h.parts}")
        if not 0 <= part.index < h.parts:
            return Refuse("invalid_args", f"part: expected 0..{h.parts - 1}, got {part.index}")
        done = self.finished.get(h.update_id)
        if done is not None:
            if done[0] != h:
                return Refuse("invalid_args", _inconsistent(h, done[0]))
            return done[1]
        s = self.staged
        if s is not None and now >= s.deadline:
            s = None  # expired: a new part of it starts over; the adapter drops the old rows as replaced
        cap = lim.max_differential_tokens if h.kind == "differential" else lim.max_tokens
        if s is not None and s.header.update_id == h.update_id:
            if s.header != h:
                return Refuse("invalid_args", _inconsistent(h, s.header))
            have = s.digests.get(part.index)
            if have is not None:
                if have != part.digest:
                    return Refuse(
                        "invalid_args",
                        f"update {h.update_id!r}: part {part.index} was already received with different content",
                    )
                return Duplicate(complete=s.complete)
            if s.tokens + part.tokens > cap or s.size + part.size > lim.max_bytes:
                return Refuse(
                    "token_list_refused",
                    f"update {h.update_id!r} exceeds the staging caps ({cap} tokens, {lim.max_bytes} bytes): "
                    "abandoned, nothing changed",
                    abandon=h.update_id,
                )
            return Accept(complete=s.received + 1 == h.parts)
        # the first part of a new update
        if s is not None and h.version < s.header.version:
            return Refuse(
                "token_list_refused",
                f"update {s.header.update_id!r} of newer version {s.header.version} is being staged",
            )
        if applied_version is not None:
            problem = _version_problem(h, applied_version)
            if problem is not None:
                return Refuse("token_list_refused", f"version {h.version} not applied: {problem}")
        if part.tokens > cap or part.size > lim.max_bytes:
            return Refuse(
                "token_list_refused", f"part exceeds the staging caps ({cap} tokens, {lim.max_bytes} bytes)"
            )
        replaces = self.staged.header.update_id if self.staged is not None else None
        return Accept(complete=h.parts == 1, replaces=replaces)

    # -- transitions --------------------------------------------------------------------------------------------
    def accepted(self, part: Part, now: float) -> Staged:
        s = self.staged
        if s is None or s.header.update_id != part.header.update_id or now >= s.deadline:
            s = self.staged = Staged(part.header, now + self.limits.idle_timeout)
        if part.index not in s.digests:
            s.digests[part.index] = part.digest
            s.tokens += part.tokens
            s.size += part.size
        s.deadline = now + self.limits.idle_timeout
        return s

    def restore(self, staged: Staged) -> None:
        """The staged update found on disk at start (its idle deadline restarts then)."""
        self.staged = staged

    def abandon(self, update_id: str) -> None:
        if self.staged is not None and self.staged.header.update_id == update_id:
            self.staged = None

    def finished_update(self, header: PartHeader, ok: bool, result: dict[str, Any]) -> Replay:
        if self.staged is not None and self.staged.header.update_id == header.update_id:
            self.staged = None
        replay = Replay(ok, result)
        self.finished[header.update_id] = (header, replay)
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)
        return replay


def _inconsistent(got: PartHeader, want: PartHeader) -> str:
    return (
        f"inconsistent part: update {want.update_id!r} is {want.describe()}, this part says {got.describe()}; "
        "refused, nothing changed"
    )


def _version_problem(h: PartHeader, applied: int) -> str | None:
    """Early version checks (the token store checks again when applying)."""
    if h.kind == "differential":
        if h.base_version != applied:
            return (
                f"base version {h.base_version} does not match the applied list version {applied}: "
                "full resync required"
            )
        if h.version <= applied:
            return f"version {h.version} is not newer than the applied version {applied}"
    elif h.version < applied:
        return f"full list version {h.version} is older than the applied version {applied}"
    return None


def split_counts(total_bytes: int, count: int, max_part_bytes: int) -> int:
    """How many parts of about equal token count a list of `count` entries / `total_bytes` encoded needs so each
    stays under max_part_bytes (used by senders; the caller re-splits a part that still came out too big)."""
    if count == 0 or total_bytes <= max_part_bytes:
        return 1
    return min(count, -(-total_bytes // max_part_bytes))
