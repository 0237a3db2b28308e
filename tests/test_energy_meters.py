"""Energy meters against fake devices: RAPL and INA3221 sysfs trees, a scripted `vcgencmd`, a fake pynvml;
the sampler's integration against a known power trace; the worker, the records and `toolkit doctor` on top."""

from __future__ import annotations

import math
import os
import sys
import time
import types
import typing
from pathlib import Path

import pytest

from toolkit.profiling import meters
from toolkit.profiling.meters.base import Meter, Unavailable
from toolkit.profiling.meters.ina3221 import Ina3221Meter
from toolkit.profiling.meters.model import PowerModel
from toolkit.profiling.meters.nvml import NvmlMeter
from toolkit.profiling.meters.pi5_pmic import Pi5PmicMeter, rail_watts
from toolkit.profiling.meters.rapl import RaplMeter
from toolkit.profiling.meters.sampler import Recorder, integrate


@pytest.fixture(autouse=True)
def no_meters(tmp_path, monkeypatch):
    """Every source pointed at nothing, so a test sees only the fake device it builds."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for var in ("EDGEFIRST_RAPL_ROOT", "EDGEFIRST_HWMON_ROOT", "EDGEFIRST_IIO_ROOT"):
        monkeypatch.setenv(var, str(empty))
    monkeypatch.setenv("EDGEFIRST_VCGENCMD", str(tmp_path / "no-vcgencmd"))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    for var in ("EDGEFIRST_ENERGY_METER", "EDGEFIRST_ENERGY_HZ", "EDGEFIRST_ENERGY_IDLE_S"):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, text: str | int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n")


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- RAPL -------------------------------------------------------------------------------------------------

def rapl_tree(root: Path, dram: bool = True) -> tuple[Path, Path]:
    pkg, sub = root / "intel-rapl:0", root / "intel-rapl:0" / "intel-rapl:0:1"
    write(pkg / "name", "package-0")
    write(pkg / "max_energy_range_uj", 1_000_000)
    write(pkg / "energy_uj", 999_000)
    write(pkg / "intel-rapl:0:0" / "name", "core")  # inside the package: not counted twice
    write(pkg / "intel-rapl:0:0" / "energy_uj", 5)
    write(sub / "name", "dram" if dram else "uncore")
    write(sub / "max_energy_range_uj", 500_000)
    write(sub / "energy_uj", 100)
    write(root / "intel-rapl:1" / "name", "psys")  # the platform: holds the package already
    write(root / "intel-rapl:1" / "energy_uj", 7)
    return pkg, sub


@pytest.fixture
def rapl(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path / "powercap"))
    return rapl_tree(tmp_path / "powercap")


def test_rapl_package_and_dram_per_domain_with_a_wrap(rapl):
    pkg, dram = rapl
    meter = RaplMeter.open()
    assert meter.label == "measured: RAPL package+DRAM" and list(meter.domains) == ["package-0", "dram-0"]
    write(pkg / "energy_uj", 2_000)  # wrapped: 999,000 -> 1,000,000 -> 2,000 is 3,000 uJ
    write(dram / "energy_uj", 50_100)
    assert meter.read() == {"package-0": 0.003, "dram-0": 0.05}
    write(pkg / "energy_uj", 12_000)
    write(dram / "energy_uj", 600)  # wrapped: 600 - 50,100 + 500,000 = 450,500 uJ more
    assert meter.read() == pytest.approx({"package-0": 0.013, "dram-0": 0.5005}, rel=1e-12)
    assert meter.joules() == pytest.approx(0.5135, rel=1e-12)  # nothing new since the last read


def test_rapl_without_dram_and_why_not(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path / "p"))
    rapl_tree(tmp_path / "p", dram=False)
    assert RaplMeter.open().label == "measured: RAPL package"
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path / "absent"))
    with pytest.raises(Unavailable, match="no .*absent"):
        RaplMeter.open()
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path / "empty"))
    with pytest.raises(Unavailable, match="a VM, or not x86"):
        RaplMeter.open()


def test_unreadable_rapl_says_how_to_open_it(rapl, monkeypatch):
    from toolkit.profiling.meters import rapl as rapl_module

    def root_only(path: Path) -> float:  # what a non-root user meets since Linux 5.10 (as root, chmod 0 reads anyway)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(rapl_module, "read_number", root_only)
    with pytest.raises(Unavailable, match="energy_uj is not readable|max_energy_range_uj is not readable") as info:
        RaplMeter.open()
    assert "chmod a+r" in info.value.fix


def test_recorder_reads_energy_counters_at_window_edges(rapl):
    pkg, dram = rapl
    clock = Clock()
    rec = Recorder(RaplMeter.open(), clock=clock)
    with rec:
        def quiet(seconds: float) -> None:
            write(pkg / "energy_uj", 1_000)  # +2,000 uJ (wrapped) over 2 s of idle: 1 mW
            clock.t += seconds

        rec.idle(2.0, sleep=quiet)
        start = rec.mark()
        write(pkg / "energy_uj", 501_000)  # +0.5 J package
        write(dram / "energy_uj", 100_100)  # +0.1 J DRAM
        clock.t += 0.25
        rec.window("prefill", 64, start, rec.mark())
    out = rec.result({"nvml": "why"})
    assert out["meter"] == "rapl" and out["sample_hz"] is None and out["idle_w"] == 0.001
    assert out["windows"] == [{"phase": "prefill", "tokens": 64, "seconds": 0.25, "joules": 0.6,
                               "net_joules": pytest.approx(0.6 - 0.001 * 0.25)}]
    assert out["parts_j"] == {"package-0": 0.5, "dram-0": 0.1} and out["unused"] == {"nvml": "why"}


# --- Jetson INA3221 ---------------------------------------------------------------------------------------

def hwmon_tree(root: Path, input_rail: bool = True) -> Path:
    write(root / "hwmon0" / "name", "coretemp")
    dev = root / "hwmon1"
    write(dev / "name", "ina3221")
    rails = [("VDD_IN" if input_rail else "VDD_GPU_SOC", 5_000, 1_200), ("VDD_CPU_CV", 5_000, 400), ("VIN_SYS_5V0", 4_980, 700)]
    for k, (label, mv, ma) in enumerate(rails, 1):
        write(dev / f"in{k}_label", label)
        write(dev / f"in{k}_input", mv)
        write(dev / f"curr{k}_input", ma)
    write(dev / "in7_label", "sum of shunt voltages")  # no current: not a rail
    write(dev / "in7_input", 12)
    return dev


def test_ina3221_uses_the_input_rail_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFIRST_HWMON_ROOT", str(tmp_path / "hwmon"))
    dev = hwmon_tree(tmp_path / "hwmon")
    meter = Ina3221Meter.open()
    assert meter.label == "measured: INA3221 VDD_IN" and meter.kind == "power"
    assert meter.read() == {"VDD_IN": 6.0}  # 5,000 mV x 1,200 mA
    write(dev / "curr1_input", 2_000)
    assert meter.read() == {"VDD_IN": 10.0}


def test_ina3221_sums_rails_without_an_input_rail_and_prefers_power_files(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFIRST_HWMON_ROOT", str(tmp_path / "hwmon"))
    dev = hwmon_tree(tmp_path / "hwmon", input_rail=False)
    write(dev / "power3_input", 3_500_000)  # uW, read instead of V x I
    meter = Ina3221Meter.open()
    assert meter.label == "measured: INA3221 VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    assert meter.read() == pytest.approx({"VDD_GPU_SOC": 6.0, "VDD_CPU_CV": 2.0, "VIN_SYS_5V0": 3.5}, rel=1e-12)


def test_ina3221_iio_layout_of_jetpack_4(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFIRST_IIO_ROOT", str(tmp_path / "iio"))
    dev = tmp_path / "iio" / "iio:device0"
    write(dev / "name", "ina3221x")
    for k, (rail, mw, ma, mv) in enumerate([("POM_5V_IN", None, 1_000, 5_080), ("POM_5V_GPU", 1_234, 300, 5_000)]):
        write(dev / f"rail_name_{k}", rail)
        write(dev / f"in_current{k}_input", ma)
        write(dev / f"in_voltage{k}_input", mv)
        if mw is not None:
            write(dev / f"in_power{k}_input", mw)
    meter = Ina3221Meter.open()
    assert meter.label == "measured: INA3221 POM_5V_IN" and meter.read() == pytest.approx({"POM_5V_IN": 5.08}, rel=1e-12)
    (dev / "rail_name_0").write_text("NC\n")  # without the input rail: the GPU rail's own power file, mW
    assert Ina3221Meter.open().read() == pytest.approx({"POM_5V_GPU": 1.234}, rel=1e-12)


def test_no_ina3221_says_not_a_jetson():
    with pytest.raises(Unavailable, match="not a Jetson"):
        Ina3221Meter.open()


# --- Raspberry Pi 5 PMIC ----------------------------------------------------------------------------------

PMIC = """\
   3V7_WL_SW_A current(0)=0.00390372A
   3V3_SYS_A current(1)=0.05660400A
   1V8_SYS_A current(2)=0.16888440A
   VDD_CORE_A current(7)=2.26455600A
   HDMI_A current(10)=0.00000000A
   3V7_WL_SW_V volt(8)=3.74325000V
   3V3_SYS_V volt(9)=3.31171200V
   1V8_SYS_V volt(10)=1.80439800V
   VDD_CORE_V volt(15)=0.88107430V
   EXT5V_V volt(24)=5.13825000V
   BATT_V volt(25)=0.00000000V
"""
PMIC_W = {"3V7_WL_SW": 0.00390372 * 3.74325, "3V3_SYS": 0.056604 * 3.311712, "1V8_SYS": 0.1688844 * 1.804398,
          "VDD_CORE": 2.264556 * 0.8810743}  # HDMI has no voltage line, EXT5V and BATT no current: left out


def scripted_vcgencmd(tmp_path: Path, monkeypatch, body: str) -> Path:
    script = tmp_path / "vcgencmd"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setenv("EDGEFIRST_VCGENCMD", str(script))
    return script


def test_pi5_pmic_sums_v_times_i_over_rails(tmp_path, monkeypatch):
    (tmp_path / "adc.txt").write_text(PMIC)
    scripted_vcgencmd(tmp_path, monkeypatch, f'[ "$1" = pmic_read_adc ] || exit 2\ncat "{tmp_path / "adc.txt"}"\n')
    assert rail_watts(PMIC) == pytest.approx(PMIC_W, rel=1e-12)
    meter = Pi5PmicMeter.open()
    assert meter.label == "measured: Pi 5 PMIC, 4 rails" and meter.kind == "power" and meter.max_hz == 10
    assert sum(meter.read().values()) == pytest.approx(2.50204551204, rel=1e-9)
    assert sum(meter.read().values()) == pytest.approx(sum(PMIC_W.values()), rel=1e-12)


def test_pi5_pmic_why_not(tmp_path, monkeypatch):
    with pytest.raises(Unavailable, match="not a Raspberry Pi"):
        Pi5PmicMeter.open()
    scripted_vcgencmd(tmp_path, monkeypatch, 'echo "VCHI initialization failed" >&2\nexit 255\n')
    with pytest.raises(Unavailable, match="VCHI initialization failed") as info:
        Pi5PmicMeter.open()
    assert "video group" in info.value.fix
    scripted_vcgencmd(tmp_path, monkeypatch, "echo 'error=2 error_msg=\"Command not registered\"'\n")
    with pytest.raises(Unavailable, match="Pi 4 or older"):
        Pi5PmicMeter.open()


def test_pi5_pmic_sampled_in_the_background(tmp_path, monkeypatch):
    """A constant draw read through the scripted command: every window holds exactly power x its length."""
    (tmp_path / "adc.txt").write_text(PMIC)
    scripted_vcgencmd(tmp_path, monkeypatch, f'cat "{tmp_path / "adc.txt"}"\n')
    watts = sum(PMIC_W.values())
    with Recorder(Pi5PmicMeter.open(), hz=20) as rec:
        rec.idle(0.3)
        start = rec.mark()
        time.sleep(0.25)
        rec.window("decode", 16, start, rec.mark())
    out = rec.result()
    assert out["sample_hz"] == 10 and out["samples"] >= 4 and out["read_errors"] == 0
    [w] = out["windows"]
    assert out["idle_w"] == pytest.approx(watts, rel=1e-4)
    assert w["joules"] == pytest.approx(watts * w["seconds"], rel=1e-4) and w["net_joules"] == pytest.approx(0, abs=1e-5)


# --- NVML -------------------------------------------------------------------------------------------------

def fake_pynvml(energy_mj: list[int] | None, power_mw: list[int], driver: bool = True) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def total_energy(h):
        if energy_mj is None:
            raise NVMLError("Not Supported")
        return energy_mj[h]

    def init():
        if not driver:
            raise NVMLError("Driver Not Loaded")
        nvml.inits += 1

    def shutdown():
        nvml.inits -= 1

    nvml.NVMLError, nvml.inits = NVMLError, 0
    nvml.nvmlInit, nvml.nvmlShutdown = init, shutdown
    nvml.nvmlDeviceGetCount = lambda: len(power_mw)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nvml.nvmlDeviceGetPowerUsage = lambda h: power_mw[h]
    return nvml


def test_nvml_energy_counter_per_gpu(monkeypatch):
    energy = [1_000_000, 2_000_000]
    nvml = fake_pynvml(energy, [0, 0])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    clock = Clock()
    rec = Recorder(NvmlMeter.open(), clock=clock)
    assert rec.meter.label == "measured: NVML energy counter, 2 GPUs" and rec.meter.kind == "energy" and nvml.inits == 1
    with rec:
        start = rec.mark()
        energy[0] += 150_000  # mJ
        energy[1] += 50_500
        clock.t += 2.0
        rec.window("decode", 128, start, rec.mark())
    out = rec.result()
    assert out["parts_j"] == {"gpu0": 150.0, "gpu1": 50.5} and out["windows"][0]["joules"] == 200.5
    assert nvml.inits == 0  # shut down once the run is over


def test_nvml_power_draw_where_the_counter_is_not_supported(monkeypatch):
    nvml = fake_pynvml(None, [61_250])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    meter = NvmlMeter.open()
    assert meter.kind == "power" and meter.label == "measured: NVML power draw, 1 GPU"
    assert meter.read() == {"gpu0": 61.25}
    meter.close()
    meter.close()
    assert nvml.inits == 0


def test_nvml_why_not(monkeypatch):
    with pytest.raises(Unavailable, match="nvidia-ml-py is not installed"):
        NvmlMeter.open()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(None, [1], driver=False))
    with pytest.raises(Unavailable, match="Driver Not Loaded"):
        NvmlMeter.open()
    nvml = fake_pynvml(None, [])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with pytest.raises(Unavailable, match="no NVIDIA GPU"):
        NvmlMeter.open()
    assert nvml.inits == 0


# --- integration of a power trace -------------------------------------------------------------------------

def test_trapezoid_of_a_sampled_sine_within_one_percent():
    hz, period = 20, 3.0
    times = [i / hz for i in range(int(12 * hz) + 1)]
    power = [10 + 5 * math.sin(2 * math.pi * t / period) for t in times]
    t0, t1 = 1.234, 7.89  # between samples at both ends
    exact = 10 * (t1 - t0) - 5 * period / (2 * math.pi) * (math.cos(2 * math.pi * t1 / period) - math.cos(2 * math.pi * t0 / period))
    assert exact == pytest.approx(66.1679, abs=1e-4)  # 66.56 J at a flat 10 W, less the sine's part
    assert integrate(times, power, t0, t1) == pytest.approx(exact, rel=0.01)
    assert integrate(times, power, t0, t1) == pytest.approx(exact, rel=1e-4)  # trapezoids at 20 Hz: 6e-6 off


def test_trapezoid_of_a_ramp_is_exact_and_clamps_outside_the_samples():
    times = [i / 10 for i in range(11)]
    power = [2 + 3 * t for t in times]
    assert integrate(times, power, 0.05, 0.95) == pytest.approx(3.15, rel=1e-12)  # 2 x 0.9 + 1.5 x (0.95^2 - 0.05^2)
    assert integrate(times, power, 1.0, 3.0) == pytest.approx(10.0, rel=1e-12)  # held at the last sample, 5 W
    assert integrate([], [], 0, 1) == 0.0 and integrate(times, power, 0.5, 0.5) == 0.0


class SinePower(Meter):
    """A power source whose draw is a known function of time."""

    name, kind, max_hz, label, detail = "sine", "power", 50.0, "measured: sine", "test"

    def __init__(self, origin: float):
        self.origin = origin

    @classmethod
    def open(cls) -> SinePower:
        return cls(time.perf_counter())

    @staticmethod
    def watts(t: float) -> float:
        return 10 + 5 * math.sin(2 * math.pi * t)

    @staticmethod
    def energy(t0: float, t1: float) -> float:
        return 10 * (t1 - t0) - 5 / (2 * math.pi) * (math.cos(2 * math.pi * t1) - math.cos(2 * math.pi * t0))

    def read(self) -> dict[str, float]:
        return {"rail": self.watts(time.perf_counter() - self.origin)}


def test_background_sampler_integrates_a_known_trace_within_one_percent():
    meter = SinePower.open()
    with Recorder(meter, hz=50) as rec:
        time.sleep(0.1)
        start = rec.mark()
        time.sleep(0.7)
        end = rec.mark()
        rec.window("decode", 32, start, end)
        time.sleep(0.05)
    out = rec.result()
    exact = SinePower.energy(start.t - meter.origin, end.t - meter.origin)
    assert out["samples"] >= 20 and out["sample_hz"] == 50
    assert out["windows"][0]["joules"] == pytest.approx(exact, rel=0.01)
    assert out["windows"][0]["net_joules"] is None  # no idle measured


# --- the power model, the registry and the worker ----------------------------------------------------------

POWER = {"busy_w": 35.0, "idle_w": 10.0, "note": "assumed"}


def test_power_model_is_busy_watts_times_time():
    clock = Clock()
    with Recorder(PowerModel.open(POWER), clock=clock) as rec:
        start = rec.mark()
        clock.t += 0.4
        rec.window("prefill", 128, start, rec.mark())
    out = rec.result()
    assert out["source"] == "estimated: power model, busy 35 W x measured time (assumed)"
    assert out["idle_w"] == 10.0 and out["windows"][0]["joules"] == pytest.approx(14.0)
    assert out["windows"][0]["net_joules"] == pytest.approx(10.0)  # (35 - 10) W x 0.4 s
    with pytest.raises(Unavailable, match="no device.power"):
        PowerModel.open(None)


def test_recipe_names_the_registry_meters():
    from toolkit.recipe import Device

    assert typing.get_args(Device.model_fields["energy_meter"].annotation) == meters.NAMES
    assert Device().energy_meter == "auto"


def test_auto_prefers_the_input_rail_and_says_why_not_the_rest(tmp_path, monkeypatch, rapl):
    monkeypatch.setenv("EDGEFIRST_HWMON_ROOT", str(tmp_path / "hwmon"))
    hwmon_tree(tmp_path / "hwmon")
    choice = meters.choose("auto", POWER)
    assert choice.meter.name == "ina3221" and choice.label == "measured: INA3221 VDD_IN"
    assert choice.unused() == {"pi5-pmic": f"no {tmp_path / 'no-vcgencmd'} command (not a Raspberry Pi)",
                               "rapl": "readable, but ina3221 is preferred",
                               "nvml": "nvidia-ml-py is not installed (and no NVIDIA driver)",
                               "power-model": "readable, but ina3221 is preferred"}
    assert meters.choose("rapl").meter.name == "rapl"
    asked = meters.choose("nvml", POWER)  # asked for, not readable: the power model, with the reason kept
    assert asked.meter.name == "power-model" and asked.unused()["rapl"] == "readable, but the recipe asks for nvml"
    with pytest.raises(ValueError, match="unknown energy meter"):
        meters.choose("wattmeter")


def test_nothing_readable_here_is_estimated_with_the_reasons(tmp_path):
    choice = meters.choose("auto", POWER)
    assert choice.meter.name == "power-model"
    assert choice.why_not_measured().startswith(f"ina3221: no INA3221 rails under {tmp_path / 'empty'}")
    assert "rapl: no RAPL package zones" in choice.why_not_measured()
    none = meters.choose("auto")
    assert none.meter is None and none.label.startswith("unknown: ina3221: ")


class FakeSession:
    """A runtime session that draws a known energy from the fake RAPL package on every call."""

    def __init__(self, energy_uj: Path):
        self.file, self.uj = energy_uj, 0

    def _spend(self, uj: int) -> None:
        self.uj += uj
        write(self.file, self.uj % 1_000_000)  # the fake counter's range: wraps during the run

    def prefill(self, tokens):
        self._spend(1_000 * len(tokens))
        return 1

    def decode(self, token):
        self._spend(20_000)
        return token

    def reset_perf(self):
        pass

    def perf(self):
        return None


def test_worker_measures_every_window_with_the_chosen_meter(rapl, monkeypatch):
    from toolkit.profiling import worker

    pkg, _ = rapl
    monkeypatch.setenv("EDGEFIRST_ENERGY_IDLE_S", "0.01")
    job = {"prompt_lengths": [8, 32], "decode_tokens": 4, "warmup": 1, "repeats": 2}
    out = worker.profile(FakeSession(pkg / "energy_uj"), list(range(64)), job)
    energy = out["energy"]
    assert energy["meter"] == "rapl" and energy["source"] == "measured: RAPL package+DRAM" and energy["idle_w"] == 0
    assert [(w["phase"], w["tokens"], w["joules"]) for w in energy["windows"]] == [
        ("prefill", 8, 0.008), ("prefill", 8, 0.008),  # the longest length's prefills are the decodes' own
        ("prefill", 32, 0.032), ("decode", 4, 0.08), ("prefill", 32, 0.032), ("decode", 4, 0.08),
    ]  # 1 mJ per prompt token, 20 mJ per decoded token
    assert [(p["prompt_tokens"], len(p["ttft_ms"])) for p in out["prompts"]] == [(8, 2), (32, 2)]
    assert len(out["rapl_watts"]) == 6 and out["rapl_watts"][3] == pytest.approx(0.08 / energy["windows"][3]["seconds"], rel=1e-3)
    assert energy["unused"]["ina3221"].startswith("no INA3221 rails")


def test_worker_here_estimates_and_says_why(monkeypatch):
    from toolkit.profiling import worker

    job = {"prompt_lengths": [4], "decode_tokens": 2, "warmup": 0, "repeats": 1, "power": POWER}
    session = FakeSession(Path(os.devnull))
    session._spend = lambda uj: None
    out = worker.profile(session, list(range(8)), job)
    assert out["rapl_watts"] == [] and out["energy"]["meter"] == "power-model"
    assert out["energy"]["source"].startswith("estimated: power model, busy 35 W")
    assert set(out["energy"]["unused"]) == {"ina3221", "pi5-pmic", "rapl", "nvml"}
    out = worker.profile(session, list(range(8)), {**job, "power": None})
    assert out["energy"]["meter"] is None and out["energy"]["source"].startswith("unknown: ina3221: no INA3221")


# --- records and report lines -------------------------------------------------------------------------------

def _report(energies, rapl=None, power=None):
    from toolkit.records import DeviceFingerprint, DevicePower, DeviceReport, Profile, Stat

    fp = DeviceFingerprint(id="d", hostname="h", cpu_model="c", physical_cores=1, logical_cpus=1, threads_used=1,
                           ram_mb=1, os="Linux", python="3.11", runtimes={})
    profiles = [Profile(key=f"k{i}", variant_id=f"v{i}", variant_name="v", format="gguf", runtime="llama.cpp", device=fp,
                        status="ok", settings={}, file_size_mb=1, energy=e, rapl_watts=Stat.of(rapl) if rapl else None)
                for i, e in enumerate(energies)]
    return DeviceReport(recipe="r", created="now", toolkit_version="0", device=fp, variants=[], profiles=profiles,
                        power=DevicePower(**power) if power else None)


def _worker_energy(joules: list[float], idle: float | None = 2.0, meter="ina3221", source="measured: INA3221 VDD_IN"):
    return {"energy": {"meter": meter, "source": source, "sample_hz": 20.0, "samples": 40, "read_errors": 0,
                       "idle_w": idle, "parts_j": {"VDD_IN": sum(joules)}, "unused": {"rapl": "a VM"},
                       "windows": [{"phase": "decode", "tokens": 4, "seconds": 0.5, "joules": j,
                                    "net_joules": j - 1.0 if idle else None} for j in joules]}}


def test_records_keep_the_source_and_every_window():
    from toolkit.profiling.meters.summary import energy_source, measured_watts, merge_energy, profile_energy

    one, two = profile_energy(_worker_energy([3.0, 4.0])), profile_energy(_worker_energy([5.0], idle=4.0))
    assert one.watts.values == [6.0, 8.0] and one.windows[1].net_joules == 3.0 and one.unused == {"rapl": "a VM"}
    merged = merge_energy([one, two])
    assert merged.watts.values == [6.0, 8.0, 10.0] and merged.watts.runs == [2, 1] and merged.idle_w == 3.0
    assert merged.parts_j == {"VDD_IN": 12.0} and len(merged.windows) == 3
    assert merge_energy([one, None]) is None and merge_energy([one]) is one and profile_energy({}) is None
    report = _report([merged])
    assert measured_watts(report.profiles[0]).median == 8.0
    assert energy_source(report) == (
        "measured: INA3221 VDD_IN, sampled at 20 Hz and integrated over each timed window; idle 3.0 W measured "
        "before the runs; J/response is the gross energy of a response (idle not subtracted); the device report's "
        "windows also hold it net of idle")
    assert type(report).model_validate_json(report.model_dump_json()) == report


def test_report_line_here_is_estimated_with_why():
    from toolkit.profiling.meters.summary import energy_source, measured_watts, profile_energy

    estimated = profile_energy(_worker_energy([7.0], meter="power-model", source="estimated: power model, busy 14 W"))
    report = _report([estimated], power={"idle_w": 5, "busy_w": 14, "note": "assumed"})
    assert measured_watts(report.profiles[0]) is None
    assert energy_source(report) == ("estimated: busy power 14 W x measured response time (assumed); no readable meter "
                                     "here (rapl: a VM); J/response is the gross energy of a response (idle not subtracted)")
    assert energy_source(_report([None], rapl=[12.0])) == "measured: RAPL package energy during the timed runs"  # old reports
    assert energy_source(_report([None])).startswith("unknown: no readable meter and no device.power")


# --- toolkit doctor -----------------------------------------------------------------------------------------

def test_doctor_lists_every_meter_and_the_one_used(rapl):
    from toolkit.doctor import check_energy

    head, *lines = check_energy(None)
    assert (head.name, head.status, head.detail) == ("energy", "ok", "measured: RAPL package+DRAM")
    by_name = {c.name: c for c in lines}
    assert list(by_name) == ["energy/ina3221", "energy/pi5-pmic", "energy/rapl", "energy/nvml", "energy/power-model"]
    assert by_name["energy/rapl"].detail.startswith("used: package-0, dram-0 under ")
    assert by_name["energy/nvml"].detail == "none: nvidia-ml-py is not installed (and no NVIDIA driver)"
    assert all(c.status == "ok" for c in lines)


def test_doctor_here_warns_that_energy_is_estimated(tmp_path):
    from tests.conftest import write_recipe
    from toolkit.doctor import check_energy
    from toolkit.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: e
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: x}}]
        device: {{power: {{idle_w: 10, busy_w: 35, note: assumed}}}}
        """))
    head, *_ = check_energy(recipe)
    assert head.status == "warn" and head.fix
    assert head.detail.startswith("estimated: power model, busy 35 W x measured time (assumed); no readable meter here: "
                                  "ina3221: no INA3221 rails under ")
    head, *_ = check_energy(None)
    assert head.status == "warn" and "energy and cost unknown" in head.detail and "device.power" in head.fix


def test_a_budget_on_energy_fails_doctor_and_run_where_nothing_can_give_energy(tmp_path, monkeypatch, capsys):
    """No meter and no device.power: recommend would have nothing to hold max_energy_j to, so doctor fails and
    run refuses before any work; a readable meter (or a power model) makes it fine."""
    from tests.conftest import run_console, write_recipe
    from toolkit.doctor import check_energy
    from toolkit.preflight import energy_budget_error
    from toolkit.recipe import load_recipe

    def recipe(extra: str = ""):
        return write_recipe(tmp_path / "r.yaml", f"""
            name: e
            workspace: {tmp_path / 'ws'}
            reports_dir: {tmp_path / 'reports'}
            candidates: [{{model: smollm2-135m-instruct}}]
            budget: {{max_energy_j: 50, max_cost_per_1k_usd: 0.01}}
            {extra}
            """)

    head, *_ = check_energy(load_recipe(recipe()))
    assert head.status == "FAIL" and head.fix
    assert head.detail.startswith(f"{tmp_path / 'r.yaml'}: budget.max_energy_j: the budget limits energy per response "
                                  "(max_energy_j, max_cost_per_1k_usd), but this device has no readable meter (ina3221: ")
    assert run_console(monkeypatch, "run", str(recipe())) == 2
    assert "budget.max_energy_j: the budget limits energy per response" in capsys.readouterr().out
    assert not (tmp_path / "ws").exists()  # nothing compressed, nothing profiled
    assert energy_budget_error(load_recipe(recipe("device: {power: {idle_w: 3, busy_w: 9}}"))) is None
    rapl_tree(tmp_path / "powercap")
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path / "powercap"))
    assert energy_budget_error(load_recipe(recipe())) is None and check_energy(load_recipe(recipe()))[0].status == "ok"
