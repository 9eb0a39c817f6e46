"""What every benchmark shares: the machine's description, summaries of repeated timings, launching ranks and
measuring child processes."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ds_deblur.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
MIB = 2 ** 20


def host() -> dict:
    """The machine and software a result was measured on (other jobs show in the load average)."""
    import deepspeed  # here, not at the top: `ds-deblur bench --help` stays fast (DeepSpeed takes ~2 s)
    info = {"machine": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "cuda": torch.version.cuda, "load_average": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summary(values: Sequence[float]) -> dict:
    """Median and spread of repeated measurements (spread: (max - min) / median)."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "n": len(values),
            "spread": (max(values) - min(values)) / med if med else 0.0}


def ds_json_for_stage(stage: int) -> tuple[dict, str]:
    """The DeepSpeed JSON the benchmarks use (GPU: zero2_fp16.json, CPU: cpu_fp32.json) at ZeRO ``stage``, and
    the file it came from."""
    path = REPO / ("ds_configs/zero2_fp16.json" if torch.cuda.is_available() else "ds_configs/cpu_fp32.json")
    ds = json.loads(path.read_text())
    ds["zero_optimization"]["stage"] = stage
    return ds, str(path)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def add_trainer_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """--config, --set and --ranks of a benchmark that launches the trainer (the demo's config and world size)."""
    parser.add_argument("--config", default=str(REPO / "ds_configs/tiny_synth.yaml"), help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for every run (repeatable), e.g. TRAIN.TOTAL_STEPS=100")
    parser.add_argument("--ranks", type=positive_int, default=torch.cuda.device_count() or 2,
                        help="world size (default: the GPUs, or 2 CPU ranks as the demo)")


def rank_env() -> dict:
    """Environment for launched ranks: one torch thread per rank on a CPU-only machine (as the tests run), so
    ranks do not fight over cores; the repository on the path."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def torchrun(ranks: int, module: str, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(free_port()), "-m", module, *args]


def deepspeed_launcher(ranks: int, script: Path, args: Sequence[str]) -> list[str]:
    return [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", str(ranks), "--master_port",
            str(free_port()), str(script), *args]


def run_checked(command: list[str], log: Path, env: Optional[dict] = None) -> None:
    """Run a launched job to its end with its output in ``log``; a failure raises with the log's tail."""
    with open(log, "w") as handle:
        code = subprocess.run(command, cwd=REPO, env=env or rank_env(), stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:8])} ... exited {code}; its output ({log}):\n"
                           + log.read_text()[-4000:])


def measured_child(command: list[str], env: Optional[dict] = None) -> dict:
    """Seconds and peak resident memory (MiB, the kernel's high-water mark) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env or rank_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4; keeps Popen from waiting again
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}:\n{output.decode(errors='replace')[-4000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def tb_scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    """One scalar tag of a run's TensorBoard events: {step: value}."""
    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
