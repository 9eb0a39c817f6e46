"""``ds-deblur bench``: its command line, the arithmetic of its summaries, and short real runs of the
engine, memory and checkpoint benchmarks (what they read from the engine and the files; never their timings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ds_deblur.bench import (ablation as ablation_bench, memory as memory_bench, precision as precision_bench,
                             training as engine_bench)
from support.train_utils import REPO

SMALL = ["--set", "DATA.CLIP_LEN=2", "--set", "DATA.K=4"]


def bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ds_deblur.bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_lists_the_benchmarks_and_refuses_bad_input(tmp_path):
    proc = bench("--help")
    assert proc.returncode == 0
    for name in ("engine", "memory", "checkpoint", "data", "model"):
        assert name in proc.stdout
    assert bench("nosuch").returncode == 2
    missing = tmp_path / "no" / "such" / "out.json"
    proc = bench("model", "--out", str(missing))
    assert proc.returncode == 2 and str(missing.parent) in proc.stderr


def test_engine_summary_ratios_pair_runs_of_the_same_round():
    runs = [{"round": 0, "variant": "ddp", "step_time_s": [1.0, 1.0, 3.0], "data_time_s": [0.0, 0.1, 0.0]},
            {"round": 0, "variant": "zero2", "step_time_s": [2.0, 2.0], "data_time_s": [0.0, 0.0]},
            {"round": 1, "variant": "ddp", "step_time_s": [4.0], "data_time_s": [0.0]},
            {"round": 1, "variant": "zero2", "step_time_s": [4.0], "data_time_s": [0.4]}]
    result = engine_bench._summarize(runs, ["ddp", "zero2"], batch=2)
    assert result["zero2"]["vs_ddp"]["min"] == pytest.approx(0.5) and result["zero2"]["vs_ddp"]["max"] == 1.0
    assert result["zero2"]["samples_per_s"] == pytest.approx(2 / 2.0)  # batch / median of [2, 2, 4]
    assert result["ddp"]["data_wait_fraction"] == pytest.approx(0.1 / 9.0)
    assert result["ddp"]["round_medians_s"]["spread"] == pytest.approx((4.0 - 1.0) / 2.5)


def test_precision_summary_pairs_each_rounds_runs_with_fp32s():
    def run(round_, precision, times, loss):
        return {"round": round_, "preset": "base", "precision": precision, "step_time_s": times, "loss": loss}
    runs = [run(0, "fp32", [3.0, 3.0], [0.5, 0.3]), run(0, "bf16", [2.0, 2.0], [0.6, 0.2]),
            run(0, "autocast", [6.0], [1.0]), run(1, "fp32", [4.0], [9.0]), run(1, "bf16", [4.0], [9.0]),
            run(1, "autocast", [2.0], [9.0])]
    result = precision_bench._summarize(runs, ["base"])["base"]
    assert result["bf16_speedup"]["min"] == 1.0 and result["bf16_speedup"]["max"] == pytest.approx(1.5)
    assert result["autocast_speedup"]["min"] == 0.5 and result["autocast_speedup"]["max"] == 2.0
    assert result["fp32_step_s"]["median"] == 3.0 and result["bf16_step_s"]["n"] == 3
    assert result["fp32_mean_loss"] == pytest.approx(0.4) and result["autocast_mean_loss"] == 1.0
    assert "fp32_speedup" not in result


@pytest.mark.slow
@pytest.mark.dist
def test_precision_bench_times_the_trainer_in_each_cpu_precision(tmp_path):
    out = tmp_path / "precision.json"
    proc = bench("precision", "--presets", "tiny", "--rounds", "1", "--steps", "1", "--warmup", "1", *SMALL,
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    # each run's precision as its engine recorded it, each timed step a real duration, each step's loss read
    assert sorted(r["engine_precision"] for r in result["runs"]) == ["autocast", "bf16", "fp32"]
    assert all(r["engine_precision"] == r["precision"] for r in result["runs"])
    for run in result["runs"]:
        assert len(run["step_time_s"]) == 1 and run["step_time_s"][0] > 0 and len(run["loss"]) == 2
    assert "autocast speed-up" in proc.stdout and set(result["summary"]) == {"tiny"}


def test_memory_ideal_shards_only_what_the_stage_shards():
    def rank(stage, world, rank, **held):
        return {"stage": stage, "world_size": world, "rank": rank, "peak_mib": 1.0,
                "held_bytes": {"buckets": 0, "all_tensors": 0, **held}}
    mib = 2 ** 20
    alone = dict(parameters=8 * mib, gradients=8 * mib, master_weights=8 * mib, optimizer_state=16 * mib)
    half = dict(parameters=8 * mib, gradients=4 * mib, master_weights=4 * mib, optimizer_state=8 * mib)
    rows = [rank(2, 1, 0, **alone), rank(2, 2, 0, **half), rank(2, 2, 1, **{**half, "gradients": 5 * mib})]
    entry = {(e["stage"], e["world_size"]): e for e in memory_bench._summarize(rows)}[(2, 2)]
    assert entry["ideal_mib"] == pytest.approx(8 + 4 + 4 + 8)  # parameters stay whole at ZeRO 2
    assert entry["gradients_mib"] == 5  # the most loaded rank
    assert entry["vs_ideal"] == pytest.approx(25 / 24)


@pytest.mark.slow
@pytest.mark.dist
def test_memory_bench_reads_sharded_state_from_the_engine(tmp_path):
    out = tmp_path / "memory.json"
    proc = bench("memory", "--world-sizes", "1", "2", "--stages", "0", "3", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    held = {(r["stage"], r["world_size"], r["rank"]): r["held_bytes"] for r in result["ranks"]}
    solo = held[(0, 1, 0)]
    # fp32 AdamW without ZeRO: gradients as large as the parameters, two moments (+ a step counter per tensor).
    assert solo["gradients"] == solo["parameters"]
    assert 2 * solo["parameters"] <= solo["optimizer_state"] < 2.01 * solo["parameters"]
    assert solo["master_weights"] == 0
    whole = held[(3, 1, 0)]
    for rank in (0, 1):  # ZeRO 3 on 2 ranks: half of gradients and optimizer state (up to padding); parameters
        # between half and whole: those under stage3_param_persistence_threshold stay whole on every rank
        assert held[(3, 2, rank)]["optimizer_state"] < 0.51 * whole["optimizer_state"]
        assert held[(3, 2, rank)]["gradients"] < 0.51 * whole["gradients"]
        assert 0.49 * whole["parameters"] < held[(3, 2, rank)]["parameters"] < whole["parameters"]
    assert all(r["peak_mib"] > 0 for r in result["ranks"])
    assert "ZeRO 3" in proc.stdout and result["host"]["torch"]
    # The sharded EMA: a full fp32 copy on 1 rank (the masters' size), half of it per rank on 2, none at ZeRO 0.
    assert solo["ema"] == 0 and whole["ema"] == whole["master_weights"] > 0
    assert all(held[(3, 2, rank)]["ema"] == held[(3, 2, rank)]["master_weights"] < 0.51 * whole["ema"]
               for rank in (0, 1))
    entry = {(e["stage"], e["world_size"]): e for e in result["summary"]}[(3, 2)]
    assert entry["ema_vs_ideal"] == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
@pytest.mark.dist
def test_engine_bench_times_the_trainer_and_the_ddp_loop(tmp_path):
    out = tmp_path / "engine.json"
    proc = bench("engine", "--rounds", "1", "--steps", "2", "--warmup", "1", "--stages", "2", *SMALL,
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert sorted(r["variant"] for r in result["runs"]) == ["ddp", "zero2"]
    for run in result["runs"]:  # the timed steps only, each a real duration
        assert len(run["step_time_s"]) == 2 and all(t > 0 for t in run["step_time_s"])
        assert all(0 <= w <= t for w, t in zip(run["data_time_s"], run["step_time_s"]))
    assert result["summary"]["ddp"]["vs_ddp"]["median"] == 1.0
    assert result["settings"]["global_batch"] == 2


@pytest.mark.slow
@pytest.mark.dist
def test_checkpoint_bench_converts_the_tag_it_saved(tmp_path):
    out = tmp_path / "checkpoint.json"
    proc = bench("checkpoint", "--config", str(REPO / "ds_configs/tiny_synth.yaml"), "--repeats", "1", *SMALL,
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    conv = result["converters"]
    params_mib = result["settings"]["params"] * 4 / 2 ** 20
    # Both weight exports hold the fp32 weights (+ buffers); last.pth adds the two AdamW moments.
    for name in ("ds-deblur convert --weights-only", "deepspeed zero_to_fp32"):
        assert params_mib <= conv[name]["written_mib"] < 1.5 * params_mib + 1
    assert conv["ds-deblur convert last.pth"]["written_mib"] > 3 * params_mib
    sharded = result["sharded"]
    assert sharded["tag_bytes"][0] > 4 * params_mib * 2 ** 20  # weights, fp32 masters and two moments
    assert all(s > 0 for s in sharded["save_s"] + sharded["load_s"] + sharded["raw_save_s"])
    # One save of each kind; the background export really ran (and was waited for between saves).
    assert len(sharded["blocked_s"]) == 1
    assert len(sharded["background_export_s"]) == 1 and sharded["background_export_s"][0] > 0


@pytest.mark.slow
@pytest.mark.dist
def test_ablation_bench_trains_with_and_without_the_spike_branch(data, tmp_path):
    out = tmp_path / "ablation.json"
    proc = bench("ablation", "--data", str(data), *SMALL, "--set", "TRAIN.TOTAL_STEPS=2", "--set",
                 "LOG.VAL_EVERY_STEPS=2", "--set", "DATA.NORM.MEAN=0.2", "--set", "DATA.NORM.STD=0.4",
                 "--original-fusion", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert list(runs) == ["rgb", "rgb+spike", "rgb+spike, original fusion"]
    assert runs["rgb"]["sets"] == ["MODEL.USE_SPIKE=false"]
    assert runs["rgb+spike, original fusion"]["sets"][-1] == "MODEL.FUSE.FRAME_DISTANCE_PENALTY=0"
    for run in runs.values():  # the same validation frames and blurry input for each, each run 2 steps
        assert run["steps"] == 2 and run["frames"] == runs["rgb"]["frames"] and run["step_time_s"] > 0
        assert run["input_psnr_rgb"] == result["blurry"]["psnr_rgb"]
    assert result["spike_gain_db"] == pytest.approx(runs["rgb+spike"]["psnr_rgb"] - runs["rgb"]["psnr_rgb"])
    assert "spike branch:" in proc.stdout


@pytest.mark.slow
@pytest.mark.dist
def test_ablation_bench_trains_svrt_demo_once_per_fusion(data, tmp_path):
    out = tmp_path / "ablation.json"
    proc = bench("ablation", "--data", str(data), "--svrt-operators", "pase_residual", "gated", "--set",
                 "TRAIN.TOTAL_STEPS=2", "--set", "LOG.VAL_EVERY_STEPS=2", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["runs"]) == result["fusions"] == ["pase_residual", "gated"]
    assert "spike_gain_db" not in result
    for name, run in result["runs"].items():  # each trained the demo's option file with its own fusion
        assert Path(run["config"]).name == f"{name}.json"
        assert run["steps"] == 2 and run["input_psnr_rgb"] == result["blurry"]["psnr_rgb"]
    assert result["runs"]["pase_residual"]["psnr_rgb"] != result["runs"]["gated"]["psnr_rgb"]
    assert "spike branch" not in proc.stdout and "gated" in proc.stdout


def test_ablation_table_sets_each_run_beside_the_blurry_input():
    run = {"psnr_rgb": 30.5, "ssim_y": 0.9, "steps": 10, "step_time_s": 1.25}
    results = {"blurry": {"psnr_rgb": 27.5, "ssim_y": 0.8}, "spike_gain_db": 2.0,
               "runs": {"rgb": {**run, "psnr_rgb": 28.5}, "rgb+spike": run}}
    text = ablation_bench.table(results)
    assert "+1.00" in text and "+3.00" in text and "10 steps, 1.25 s/step" in text
    assert text.endswith("spike branch: +2.00 dB over RGB only")


@pytest.mark.slow
def test_model_bench_against_a_reference_file(tmp_path):
    # A stand-in for the official network_vrt.py (never committed): our VRT, reached through the module's
    # torchvision import as the official file imports it.
    reference = tmp_path / "network_vrt.py"
    reference.write_text("import torchvision\nassert torchvision.ops.deform_conv2d\n"
                         "from ds_deblur.models.vrt import VRT\n")
    out = tmp_path / "model.json"
    proc = bench("model", "--reference", str(reference), "--reference-shape", "2", "64", "64",
                 "--reference-threads", "2", "--rounds", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["max_abs_difference"] == 0.0  # same code, same weights
    (row,) = results["rows"]
    assert row["threads"] == 2 and [len(v) for v in row["times_s"].values()] == [1, 1]
    assert row["official_over_ours"] == round(row["official_s"] / row["ours_s"], 3)
    assert "official / ours" in proc.stdout
    (tmp_path / "other.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("import no_such_module\n")
    for name, message in (("none.py", "no such file"), ("other.py", "no VRT class"), ("broken.py", "no_such_module")):
        bad = tmp_path / name
        proc = bench("model", "--reference", str(bad))
        assert proc.returncode == 1 and str(bad) in proc.stderr and message in proc.stderr
