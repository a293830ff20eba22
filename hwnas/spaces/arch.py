"""The Arch: the one thing that passes from search to export.

JSON: ``{"space": "proxyless", "config": {...skeleton, see hwnas.spaces.chain...},
"layers": ["k3e6", "skip", ...], ...provenance}``. A ``darts`` (cell space) Arch lists one op per cell
edge in ``layers``, or gives the paper's ``"genotype"`` instead (see hwnas.spaces.cell). Loading validates every token against the space
and fails with a message naming the layer, the bad token and the allowed ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hwnas.fsio import atomic_write_text
from hwnas.spaces.base import Space
from hwnas.spaces.chain import ArchError, Plan
from hwnas.spaces.definitions import SPACES


def get_space(name: str) -> Space:
    try:
        return SPACES[name]
    except (KeyError, TypeError):
        raise ArchError(f"unknown space {name!r}; available: {', '.join(SPACES)}") from None


@dataclass
class Arch:
    space: str
    config: dict
    layers: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    @property
    def space_obj(self) -> Space:
        return get_space(self.space)

    def validate(self) -> None:
        space = get_space(self.space)
        self.config = space.resolve_config(self.config)
        space.check_layers(self.config, self.layers)

    def plan(self, resolution: int | None = None) -> Plan:
        return self.space_obj.plan(self.config, resolution)

    def with_config(self, **changes) -> "Arch":
        return Arch(self.space, {**self.config, **changes}, list(self.layers), dict(self.meta))

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"space": self.space, "config": self.config, "layers": list(self.layers), **self.meta}
        space = self.space_obj
        if space.has_notation:  # a readable copy; loading reads 'layers' (or the string when they are absent)
            d["arch_string"] = space.arch_string(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "arch") -> "Arch":
        if not isinstance(d, dict):
            raise ArchError(f"{source}: an arch must be a JSON object with 'space', 'config', 'layers'")
        if "layers" not in d and "genotype" in d and d.get("space") in SPACES:
            try:
                d = {**d, "layers": SPACES[d["space"]].layers_from_genotype(d["genotype"], source)}
            except ArchError as e:
                raise ArchError(str(e)) from None
            d.pop("genotype")
        if "layers" not in d and "arch_string" in d and d.get("space") in SPACES:
            try:
                d = {**d, "layers": SPACES[d["space"]].parse_arch_string(d["arch_string"], source)}
            except ArchError as e:
                raise ArchError(str(e)) from None
        d = {k: v for k, v in d.items() if k != "arch_string"}
        missing = [k for k in ("space", "layers") if k not in d]
        if missing:
            raise ArchError(f"{source}: missing key(s) {missing}; an arch needs 'space' and 'layers' (and 'config')")
        meta = {k: v for k, v in d.items() if k not in ("space", "config", "layers")}
        try:
            return cls(d["space"], d.get("config") or {}, d["layers"], meta)
        except ArchError as e:
            raise ArchError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Arch":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArchError(f"arch file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ArchError(f"arch file {path} is not valid JSON: {e}") from None
        return cls.from_dict(d, str(path))

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def __str__(self) -> str:
        return self.space_obj.label(self.layers)
