"""What a stage declares (cpus, ram, gpus, threads, custom Ray resources) and the
budget it draws from.

The budget is the machine as detected (CPU affinity and cgroup quota, RAM and
cgroup limit, NVIDIA devices through NVML) unless the caller overrides a part.
A :class:`Pool` hands out grants from it; the sum of outstanding grants never
exceeds the budget. Fractions are kept in integer thousandths so that
0.1 + 0.2 never drifts past a limit. Custom resources (``{"node_b": 1}``) are
Ray's: only a Ray cluster's budget has them (a node declares them with
``ray start --resources``), so a stage that needs one fails its budget check
anywhere else.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .errors import BudgetError, StageDefinitionError

_MILLI = 1000
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pi": 2**50, "pib": 2**50,
}


def parse_size(value: int | float | str | None) -> int:
    """Bytes from ``512``, ``"256MiB"``, ``"2GiB"``, ``"1.5GB"``; ``None`` is 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. '512MiB', '2GiB')")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    """``2147483648`` -> ``"2 GiB"``: the unit a person would write."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage holds while it lives."""

    cpus: float = 1.0
    ram: int = 0
    gpus: float = 0.0
    threads: int = 0  # 0: ceil(cpus), at least 1
    custom: tuple[tuple[str, float], ...] = ()  # Ray custom resources, sorted by name

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise StageDefinitionError(f"cpus must be > 0, got {self.cpus!r}")
        if self.ram < 0:
            raise StageDefinitionError(f"ram must be >= 0, got {self.ram!r}")
        if self.gpus < 0:
            raise StageDefinitionError(f"gpus must be >= 0, got {self.gpus!r}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise StageDefinitionError(
                f"gpus above 1 must be whole devices, got {self.gpus!r}")
        if self.threads < 0:
            raise StageDefinitionError(f"threads must be >= 0, got {self.threads!r}")
        if self.threads == 0:
            object.__setattr__(self, "threads", max(1, math.ceil(self.cpus)))

    @classmethod
    def declare(cls, cpus: float = 1.0, ram: int | str | None = None, gpus: float = 0.0,
                threads: int | None = None, custom: Mapping[str, float] | None = None
                ) -> "Resources":
        """Build from user-facing values (``ram="2GiB"``, ``custom={"node_b": 1}``)."""
        try:
            ram_bytes = parse_size(ram)
        except ValueError as exc:
            raise StageDefinitionError(str(exc)) from None
        return cls(cpus=float(cpus), ram=ram_bytes, gpus=float(gpus), threads=threads or 0,
                   custom=_custom(custom))

    def describe(self) -> str:
        parts = [f"cpus={self.cpus:g}"]
        if self.ram:
            parts.append(f"ram={format_size(self.ram)}")
        if self.gpus:
            parts.append(f"gpus={self.gpus:g}")
        parts.extend(f"{name}={amount:g}" for name, amount in self.custom)
        return " ".join(parts)


# Ray's own names: declared with cpus=, gpus=, ram=, never as custom resources.
_RAY_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def _custom(custom: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    """Custom resources as a sorted tuple (so equal declarations compare equal), checked."""
    if custom is None:
        return ()
    if not isinstance(custom, Mapping):
        raise StageDefinitionError(
            f"resources must map custom resource names to amounts, got {custom!r}")
    for name, amount in custom.items():
        if not isinstance(name, str) or not name:
            raise StageDefinitionError(f"a custom resource name must be a non-empty string, "
                                       f"got {name!r}")
        if name in _RAY_BUILTIN:
            raise StageDefinitionError(f"{name!r} is not a custom resource: declare it with "
                                       f"cpus=, gpus= or ram=")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise StageDefinitionError(
                f"custom resource {name!r} needs an amount > 0, got {amount!r}")
        if amount > 1 and amount != int(amount):
            raise StageDefinitionError(  # Ray's rule for any resource
                f"custom resource {name!r} above 1 must be whole, got {amount!r}")
    return tuple(sorted((name, float(amount)) for name, amount in custom.items()))


@dataclass(frozen=True)
class Budget:
    """The resources a run may use at once: CPUs, bytes of RAM, GPU device ids."""

    cpus: float
    ram: int
    devices: tuple[str, ...] = ()
    custom: Mapping[str, float] = field(default_factory=dict)  # a Ray cluster's, in total

    @property
    def gpus(self) -> int:
        return len(self.devices)

    @classmethod
    def detect(cls, cpus: float | None = None, ram: int | str | None = None,
               gpus: int | None = None) -> "Budget":
        """The machine's budget, with any of its parts overridden."""
        cpus = float(cpus) if cpus is not None else detect_cpus()
        ram_bytes = parse_size(ram) if ram is not None else detect_ram()
        visible = detect_gpus()
        if gpus is None:
            devices = visible
        elif gpus <= len(visible):
            devices = visible[:gpus]
        else:
            # More devices than NVML sees: declared devices, used by tests and by
            # users who schedule against a GPU count they know better than us.
            devices = visible + tuple(str(i) for i in range(len(visible), gpus))
        if cpus <= 0:
            raise BudgetError(f"the budget needs cpus > 0, got {cpus!r}")
        return cls(cpus=cpus, ram=ram_bytes, devices=devices)

    def describe(self) -> str:
        return " ".join([f"cpus={self.cpus:g} ram={format_size(self.ram)} gpus={self.gpus}",
                         *(f"{name}={amount:g}" for name, amount in sorted(self.custom.items()))])

    def check_fits(self, stage: str, res: Resources) -> None:
        """Raise :class:`BudgetError` if one worker of ``stage`` could never start."""
        if res.cpus > self.cpus + 1e-9:
            raise BudgetError(
                f"stage {stage!r} needs cpus={res.cpus:g} but the budget has {self.cpus:g}")
        if res.ram > self.ram:
            raise BudgetError(
                f"stage {stage!r} needs ram={format_size(res.ram)} but the budget has "
                f"{format_size(self.ram)}")
        if res.gpus > self.gpus:
            raise BudgetError(
                f"stage {stage!r} needs gpus={res.gpus:g} but the budget has {self.gpus}; "
                f"pass gpus= to run() to declare devices, or declare the stage with gpus=0 "
                f"to run it on CPU")
        for name, amount in res.custom:
            have = self.custom.get(name, 0.0)
            if amount > have + 1e-9:
                raise BudgetError(
                    f"stage {stage!r} needs the custom resource {name}={amount:g} but the "
                    f"budget has {have:g}; custom resources are Ray's: run it with the ray "
                    f"executor and the address of a cluster whose nodes declare {name!r} "
                    f"(ray start --resources)")


# Roughly on-demand cloud prices; reports and served requests are costed with these
# unless the user gives their own.
DEFAULT_PRICES = {"cpu": 0.04, "ram": 0.005, "gpu": 2.50}  # $/CPU-hour, $/GB-hour, $/GPU-hour


def hourly_price(cpus: float, ram: int, gpus: float, prices: dict[str, float]) -> float:
    """Dollars per hour of holding ``cpus``, ``ram`` bytes and ``gpus`` at ``prices``."""
    return cpus * prices["cpu"] + ram / 2**30 * prices["ram"] + gpus * prices["gpu"]


def detect_cpus() -> float:
    """CPUs this process may use: affinity mask, capped by a cgroup v2 quota."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, int(quota) / int(period))
    except (OSError, ValueError):
        pass
    return cpus


def detect_ram() -> int:
    """Bytes of RAM: physical memory, capped by a cgroup v2 limit."""
    import psutil

    ram = psutil.virtual_memory().total
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            ram = min(ram, int(limit))
    except (OSError, ValueError):
        pass
    return ram


def detect_gpus() -> tuple[str, ...]:
    """Device ids visible to this process: NVML's devices, filtered by CUDA_VISIBLE_DEVICES."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return ()
    ids = tuple(str(i) for i in range(count))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1")
    return ids


@dataclass(frozen=True)
class Grant:
    """Resources handed to one worker: its share of CPUs, RAM and which devices."""

    cpus_milli: int
    ram: int
    gpu_milli: int
    devices: tuple[str, ...]
    custom_milli: tuple[tuple[str, int], ...] = ()


@dataclass
class Pool:
    """Hands out grants from a budget; the sum of live grants never exceeds it.

    A fractional GPU request goes to the most used device that still fits it,
    so two ``gpus=0.5`` workers share one device and leave the others whole.
    """

    budget: Budget
    free_cpus: int = field(init=False)
    free_ram: int = field(init=False)
    free_gpu: dict[str, int] = field(init=False)
    free_custom: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.free_cpus = round(self.budget.cpus * _MILLI)
        self.free_ram = self.budget.ram
        self.free_gpu = {d: _MILLI for d in self.budget.devices}
        self.free_custom = {n: round(a * _MILLI) for n, a in self.budget.custom.items()}

    def acquire(self, res: Resources) -> Grant | None:
        """A grant for ``res`` if it fits now, else ``None`` (nothing is taken)."""
        if not self.fits(res):
            return None
        devices = self._pick_devices(res.gpus)
        assert devices is not None
        gpu_milli = round(min(res.gpus, 1.0) * _MILLI) if res.gpus else 0
        for d in devices:
            self.free_gpu[d] -= gpu_milli
        cpus = round(res.cpus * _MILLI)
        self.free_cpus -= cpus
        self.free_ram -= res.ram
        custom = tuple((name, round(amount * _MILLI)) for name, amount in res.custom)
        for name, milli in custom:
            self.free_custom[name] -= milli
        return Grant(cpus, res.ram, gpu_milli, devices, custom)

    def release(self, grant: Grant) -> None:
        """Give a grant back."""
        self.free_cpus += grant.cpus_milli
        self.free_ram += grant.ram
        for d in grant.devices:
            self.free_gpu[d] += grant.gpu_milli
        for name, milli in grant.custom_milli:
            self.free_custom[name] += milli

    def fits(self, res: Resources) -> bool:
        """Whether :meth:`acquire` would succeed now."""
        if round(res.cpus * _MILLI) > self.free_cpus or res.ram > self.free_ram:
            return False
        if any(round(amount * _MILLI) > self.free_custom.get(name, 0)
               for name, amount in res.custom):
            return False
        return self._pick_devices(res.gpus) is not None

    def _pick_devices(self, gpus: float) -> tuple[str, ...] | None:
        if gpus == 0:
            return ()
        if gpus < 1:
            need = round(gpus * _MILLI)
            fitting = [d for d, free in self.free_gpu.items() if free >= need]
            if not fitting:
                return None
            return (min(fitting, key=lambda d: (self.free_gpu[d], d)),)
        whole = [d for d, free in self.free_gpu.items() if free == _MILLI]
        if len(whole) < int(gpus):
            return None
        return tuple(whole[: int(gpus)])
