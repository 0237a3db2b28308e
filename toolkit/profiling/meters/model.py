"""The fallback: the recipe's whole-device power figures (device.power) times the measured time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from toolkit.profiling.meters.base import Meter, Unavailable

FIX = ("set device.power (busy_w, idle_w) in the recipe from the device's datasheet or a wall meter, "
       "or enable a meter (README: Energy)")


class PowerModel(Meter):
    name = "power-model"
    kind = "model"

    def __init__(self, busy_w: float, idle_w: float, note: str = ""):
        self.busy_w, self.idle_w = busy_w, idle_w
        self.label = f"estimated: power model, busy {busy_w:g} W x measured time" + (f" ({note})" if note else "")
        self.detail = f"device.power: busy {busy_w:g} W, idle {idle_w:g} W"

    @classmethod
    def open(cls, power: Mapping[str, Any] | None = None) -> PowerModel:
        if not power:
            raise Unavailable("the recipe sets no device.power", FIX)
        return cls(float(power["busy_w"]), float(power["idle_w"]), str(power.get("note", "")))

    def read(self) -> dict[str, float]:
        """The busy power, watts."""
        return {"busy": self.busy_w}
