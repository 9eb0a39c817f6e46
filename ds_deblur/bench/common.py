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
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ds_deblur.config import RECORD_KEY, Config, load_config
from ds_deblur.data.synth import SynthConfig, generate
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


def synthetic_trainer_sets(config: str, sets: Sequence[str], workers: int, work: Path) -> tuple[Config, list[str]]:
    """The config of timed trainer runs and their overrides: ``sets``, ``workers`` loader workers per rank (the
    original's TOTAL_WORKERS dropped) and a small synthetic set made in ``work`` for the config's clip length, crop
    and spike bins (it has no voxel cache)."""
    sets = [*sets, f"DATALOADER.NUM_WORKERS={workers}", "DATALOADER.TOTAL_WORKERS=null",
            "DATA.USE_PRECOMPUTED_VOXELS=false"]
    cfg = load_config(config, sets)
    data = work / "data"
    generate(data, SynthConfig(seed=0, train_seqs=2, val_seqs=1, frames=max(8, cfg.DATA.CLIP_LEN + 2),
                               size=cfg.DATA.crop_hw, subframes=max(cfg.DATA.K, 8)))
    return cfg, [*sets, f"DATA.ROOT={data}"]


def trainer_step_times(config: str, ds: dict, sets: Sequence[str], out: Path, ranks: int, warmup: int,
                       steps: int) -> dict:
    """Run the trainer (``deepspeed`` launcher, ``ranks`` ranks) for ``warmup + steps`` optimizer steps with the
    DeepSpeed config ``ds``, no validation or export on the way; its ``perf/step_time_ms`` and
    ``perf/data_time_ms`` of the timed steps, in seconds, its ``train/loss`` of every step, and the precision its
    engine ran in (fp32, bf16, autocast or fp16, from the run's config.yaml)."""
    from ds_deblur.zero.setup import cpu_precision_of, precision_of  # here: `bench --help` skips DeepSpeed's import
    out.mkdir(parents=True)
    (out / "ds.json").write_text(json.dumps(ds, indent=1))
    total = warmup + steps
    script = ["--config", config, "--deepspeed_config", str(out / "ds.json")]
    for item in [*sets, f"LOG.SAVE_DIR={out / 'run'}", f"TRAIN.TOTAL_STEPS={total}", f"LOG.VAL_EVERY_STEPS={total}",
                 f"LOG.SAVE_EVERY_STEPS={total}", "LOG.LOG_EVERY_STEPS=1", "LOG.EXPORT_SINGLE_FILE=false"]:
        script += ["--set", item]
    run_checked(deepspeed_launcher(ranks, REPO / "ds_deblur/train.py", script), out / "log.txt")
    tb = out / "run/tb"
    times, waits, losses = (tb_scalars(tb, tag) for tag in ("perf/step_time_ms", "perf/data_time_ms", "train/loss"))
    timed = [s for s in sorted(times) if s > warmup]
    record = yaml.safe_load((out / "run/config.yaml").read_text())[RECORD_KEY]
    return {"step_time_s": [times[s] / 1e3 for s in timed], "data_time_s": [waits[s] / 1e3 for s in timed],
            "loss": [losses[s] for s in sorted(losses)],
            "engine_precision": cpu_precision_of(record) or precision_of(record)}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
