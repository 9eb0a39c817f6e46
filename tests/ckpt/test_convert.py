"""Single-file conversion and weight export, checked against real DeepSpeed tags written on CPU by gloo ranks.

References, recorded by the training ranks right before ``save_checkpoint`` (``_reference``):
- weights and AdamW moments: DeepSpeed's own per-parameter view of its live partitioned state,
  ``deepspeed.utils.safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state`` (ZeRO 1/2: the optimizer's
  hp mapping; ZeRO 3: an all-gather of the partitions). It shares no code with the converter's offline reader.
- the optimizer step count: optimizer steps taken minus those skipped for overflow (DeepSpeed's counters).
- the step after the save: the ranks take one more optimizer step and record the resulting fp32 weights; plain
  torch (module + AdamW + LambdaLR loaded from the single file) taking the same step must land on them. That
  checks hyperparameters, bias correction (step) and schedule position, not just tensor copies.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file
from torch import nn

from ds_deblur.ckpt.atomic import save_atomic, write_atomic
from ds_deblur.ckpt.cli import convert_main as main, convert_parser as build_parser
from ds_deblur.ckpt.export import export_tag
from ds_deblur.ckpt.gather import load_pickled, loss_scaler_values
from ds_deblur.ckpt.single_file import KEYS, grad_scaler_state, load_single_file, plain
from ds_deblur.config import load_config
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.zero.setup import build_scheduler
from support.files import copy_tag
from support.tag_factory import FP16_TRAIN_STEPS, REPO, TAGS, TOTAL_STEPS, TRAIN_STEPS, Toy, batch, loss_fn, reference


def plain_model_optimizer_scheduler(ckpt: dict):
    """The original trainer's resume with plain torch: build module, AdamW and LambdaLR, then load each.

    Loading the optimizer after building the scheduler matters: LambdaLR's constructor writes the step-0 LR into
    the optimizer's groups and its load_state_dict does not write it back."""
    cfg = load_config(ckpt["config"])
    model = Toy()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = build_scheduler(optimizer, cfg, TOTAL_STEPS)
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return cfg, model, optimizer, scheduler


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(TAGS))
@pytest.mark.dist
@pytest.mark.slow
def test_single_file_holds_the_engine_state_at_save(tags, tmp_path, name):
    world, stage, precision = TAGS[name]
    out = export_tag(tags / "ckpts", name, tmp_path / "last.pth")
    ckpt = load_single_file(out)
    ref = reference(tags, name)["at_save"]

    assert set(ckpt) == set(KEYS)
    assert list(ckpt["state_dict"]) == list(Toy().state_dict())
    for key, value in ref["weights"].items():
        assert ckpt["state_dict"][key].dtype == torch.float32
        assert torch.equal(ckpt["state_dict"][key], value), key
    for key, value in ref["buffers"].items():
        assert torch.equal(ckpt["state_dict"][key], value.float() if value.is_floating_point() else value), key

    _, model, optimizer, scheduler = plain_model_optimizer_scheduler(ckpt)
    for key, param in model.named_parameters():
        state = optimizer.state[param]
        assert state["step"].item() == ref["adam_steps"]
        assert torch.equal(state["exp_avg"], ref["exp_avg"][key]), key
        assert torch.equal(state["exp_avg_sq"], ref["exp_avg_sq"][key]), key
    assert optimizer.param_groups[0]["lr"] == ref["lr"][0]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["weight_decay"] == 0.1
    assert scheduler.last_epoch == ref["adam_steps"] and scheduler.get_last_lr() == ref["lr"]

    meta = ckpt["meta"]
    assert (meta["world_size"], meta["zero_stage"], meta["precision"]) == (world, stage, precision)
    assert (meta["source_tag"], meta["best_step"], meta["data"]["position"]) == (name, 2, 6)
    assert meta["skipped_steps"] == ref["skipped_steps"]
    assert meta["versions"]["deepspeed"] == "0.19.8"
    steps = FP16_TRAIN_STEPS if precision == "fp16" else TRAIN_STEPS
    assert (ckpt["step"], ckpt["epoch"], ckpt["best_psnr"]) == (steps, 1, 27.5)


@pytest.mark.dist
@pytest.mark.slow
def test_fixture_tags_have_the_layouts_they_stand_for(tags):
    # If DeepSpeed stopped splitting or renamed files, the tests above would quietly cover less.
    ckpts = tags / "ckpts"
    sub = load_pickled(ckpts / "z3_w2_subgroups" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert len(sub["optimizer_state_dict"]["fp32_flat_groups"]) == 2
    assert (ckpts / "z1_w2_bf16" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    padded = load_pickled(ckpts / "z2_w2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")["optimizer_state_dict"]
    assert padded["group_paddings"][0] > 0  # the last rank's partition ends in padding


@pytest.mark.dist
@pytest.mark.slow
def test_fp16_scaler_loads_into_grad_scaler(tags, tmp_path):
    ckpt = load_single_file(export_tag(tags / "ckpts", "z2_w2_fp16", tmp_path / "last.pth"))
    ref = reference(tags, "z2_w2_fp16")["at_save"]
    assert ref["skipped_steps"] > 0  # the run did back off, so the scaler state is not the initial one
    assert ckpt["meta"]["loss_scaler"] == ref["loss_scaler"]
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(ckpt["scaler"])
    assert scaler.get_scale() == ref["loss_scaler"]["cur_scale"] < 2.0 ** 17
    assert scaler.get_growth_interval() == ref["loss_scaler"]["scale_window"]
    assert scaler.get_backoff_factor() == 0.5 and scaler.get_growth_factor() == 2.0


@pytest.mark.parametrize("name", [n for n, (_, _, precision) in TAGS.items() if precision == "fp32"])
@pytest.mark.dist
@pytest.mark.slow
def test_plain_torch_step_from_single_file_matches_deepspeed_next_step(tags, tmp_path, name):
    world = TAGS[name][0]
    ckpt = load_single_file(export_tag(tags / "ckpts", name, tmp_path / "last.pth"))
    cfg, model, optimizer, scheduler = plain_model_optimizer_scheduler(ckpt)
    # DeepSpeed averages the ranks' gradients: the gradient of the mean of the ranks' losses.
    loss = sum(loss_fn(model(batch(TRAIN_STEPS, r)), batch(TRAIN_STEPS, r)) for r in range(world)) / world
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.TRAIN.MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    expected = reference(tags, name)["after_next_step"]
    moved = 0.0
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[key], rtol=1e-5, atol=1e-7)
        moved = max(moved, (expected[key] - ckpt["state_dict"][key]).abs().max().item())
    assert moved > 1e-4  # the step did change the weights, so agreeing on them means something


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", list(TAGS))
@pytest.mark.dist
@pytest.mark.slow
def test_weights_export_equals_zero_to_fp32(tags, tmp_path, name, suffix, capsys):
    out = tmp_path / f"model{suffix}"
    assert main([str(tags / "ckpts"), "--tag", name, "--weights-only", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    ours = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(tags / "ckpts"), name)
    assert set(ours) == set(theirs) == set(Toy().state_dict())
    if suffix == ".pth":  # safetensors files keep no order
        assert list(ours) == list(Toy().state_dict())
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    for key, value in reference(tags, name)["at_save"]["buffers"].items():
        assert torch.equal(ours[key], value.float() if value.is_floating_point() else value), key
    Toy().load_state_dict(ours)


@pytest.mark.dist
@pytest.mark.slow
def test_cli_default_tag_is_latest_and_tag_dir_works_directly(tags, tmp_path):
    assert main([str(tags / "ckpts"), "--out", str(tmp_path / "a.pth")]) == 0
    assert main([str(tags / "ckpts" / "z3_w2"), "--out", str(tmp_path / "b.pth")]) == 0
    assert load_single_file(tmp_path / "a.pth")["meta"]["source_tag"] == "z2_w2"
    assert load_single_file(tmp_path / "b.pth")["meta"]["source_tag"] == "z3_w2"


@pytest.mark.dist
@pytest.mark.slow
def test_cli_subprocess_without_huggingface_hub(tags, tmp_path):
    # huggingface_hub is made unimportable: converting must not need it (zero_to_fp32 imports it lazily).
    code = ("import sys; sys.modules['huggingface_hub'] = None; from ds_deblur.ckpt.cli import convert_main as main; "
            "sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "model.safetensors"
    result = subprocess.run([sys.executable, "-c", code, str(tags / "ckpts"), "--weights-only", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("[convert] wrote") and len(result.stdout.splitlines()) == 1


@pytest.mark.dist
@pytest.mark.slow
def test_incomplete_or_truncated_tags_are_refused(tags, tmp_path):
    unmarked = copy_tag(tags, "z2_w2", tmp_path)
    (unmarked / "COMMIT.json").unlink()
    with pytest.raises(CheckpointFormatError, match="z2_w2 is incomplete or damaged: no COMMIT.json"):
        export_tag(unmarked, None, tmp_path / "x.pth")
    truncated = copy_tag(tags, "z3_w2", tmp_path)
    optim = truncated / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:1000])
    with pytest.raises(CheckpointFormatError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt has 1000 bytes"):
        export_tag(tmp_path / "ckpts", "z3_w2", tmp_path / "x.pth")
    with pytest.raises(CheckpointFormatError, match="neither a checkpoint directory.*tags found: z2_w2, z3_w2"):
        export_tag(tmp_path / "ckpts", None, tmp_path / "x.pth")
    with pytest.raises(CheckpointFormatError, match="COMMIT.json is a file; convert reads DeepSpeed tags"):
        export_tag(truncated / "COMMIT.json", None, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.dist
@pytest.mark.slow
def test_rank_files_that_do_not_belong_together_are_refused(tags, tmp_path):
    # A commit marker vouches for sizes, not content: rank 1's file from a 1-rank run must still be caught.
    mixed = copy_tag(tags, "z2_w2", tmp_path)
    (mixed / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    commit = json.loads((mixed / "COMMIT.json").read_text())
    del commit["files"]["zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    (mixed / "COMMIT.json").write_text(json.dumps(commit))
    with pytest.raises(CheckpointFormatError, match=r"saved by 2 ranks but has optimizer files for ranks \[0\]"):
        export_tag(mixed, None, tmp_path / "x.pth")


@pytest.mark.dist
@pytest.mark.slow
def test_ema_export_of_a_run_without_ema_says_so(tags, tmp_path, capsys):
    assert main([str(tags / "ckpts"), "--weights-only", "--ema", "--out", str(tmp_path / "ema.pth")]) == 1
    assert "z2_w2 has no EMA weights" in capsys.readouterr().err and not (tmp_path / "ema.pth").exists()


def test_ema_goes_with_weights_only(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--ema", "--out", str(tmp_path / "x.pth")])
    assert exit_.value.code == 2 and "--ema goes with --weights-only" in capsys.readouterr().err


def test_cli_missing_path_is_an_argparse_error(tmp_path):
    missing = tmp_path / "nope"
    result = subprocess.run([sys.executable, "-m", "ds_deblur", "convert", str(missing), "--out", str(tmp_path / "x")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: Checkpoint not found: {missing}" in result.stderr and "usage:" in result.stderr


def test_cli_help_documents_the_options():
    text = build_parser().format_help()
    for option in ("CKPT_DIR", "--tag", "--out", "--weights-only", "--ema", "latest", "safetensors"):
        assert option in text


# ----------------------------------------------------------------------------------- single-file safety
def test_load_single_file_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "last.pth"
    torch.save({"step": 1, "payload": Payload()}, evil)
    with pytest.raises(CheckpointFormatError, match=r"last.pth was refused.*unsupported GLOBAL posix.system"):
        load_single_file(evil)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the file really would have run the command
    assert marker.exists()


def test_load_single_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found: .*missing.pth"):
        load_single_file(tmp_path / "missing.pth")
    weights = tmp_path / "model.pth"
    torch.save(Toy().state_dict(), weights)
    with pytest.raises(CheckpointFormatError, match="model.pth is not a ds_deblur single-file checkpoint"):
        load_single_file(weights)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CheckpointFormatError, match="cut.pth is truncated or not a torch checkpoint"):
        load_single_file(truncated)


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = save_atomic({"step": 1}, tmp_path / "last.pth")

    def crash_half_way(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, crash_half_way)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_plain_reduces_subclasses_and_refuses_objects():
    cleaned = plain({"versions": {"torch": torch.__version__}, "betas": (0.9, 0.99)})
    assert type(cleaned["versions"]["torch"]) is str and cleaned["betas"] == (0.9, 0.99)
    with pytest.raises(CheckpointFormatError, match=r"checkpoint\['data'\]\['rng'\] is a Generator"):
        plain({"data": {"rng": torch.Generator()}})


@pytest.mark.parametrize("good_steps", range(1, 8))
def test_grad_scaler_grows_on_the_step_deepspeed_would(good_steps):
    # DeepSpeed's real dynamic loss scaler after some good steps, then both run on until their first growth.
    window = 3
    ds = DynamicLossScaler(init_scale=2.0 ** 10, scale_window=window, min_scale=1, delayed_shift=2,
                           consecutive_hysteresis=False)
    for _ in range(good_steps):
        ds.update_scale(False)
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(grad_scaler_state(loss_scaler_values(ds)))
    assert scaler.get_scale() == ds.cur_scale

    def steps_until_growth(step) -> int:
        for n in range(1, 2 * window + 2):
            if step():
                return n
        raise AssertionError("no growth")

    def ds_step() -> bool:
        before = ds.cur_scale
        ds.update_scale(False)
        return ds.cur_scale > before

    param = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=0.0)

    def torch_step() -> bool:
        before = scaler.get_scale()
        optimizer.zero_grad()
        scaler.scale(param.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        return scaler.get_scale() > before

    assert steps_until_growth(torch_step) == steps_until_growth(ds_step)
