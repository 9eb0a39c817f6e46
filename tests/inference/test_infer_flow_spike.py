"""``ds-deblur infer`` with S-VRT's network and SCFlow: every temporal window gets ``flow_spike``, the encoding25
windows of its frames, the same as the validation dataset gives the model (from the ``.dat`` streams or from
precomputed ``encoding25_dt{dt}`` artifacts); a model without SCFlow reads none; spike streams too short for the
windows are refused up front, naming the stream."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch

from ds_deblur.config import Config, load_config
from ds_deblur.data.dataset import ReprSource, SpikeDeblurDataset
from ds_deblur.data.loader import build_datasets
from ds_deblur.data.prepare import prepare_representation
from ds_deblur.data.representations import SpikeRepr
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.inference import cli
from ds_deblur.inference.tiling import blend_ramp
from ds_deblur.models import build_model

# 32 spike frames per exposure: two 25-frame encoding25 windows each; spikes at half the RGB size, so every spike
# input is resampled (bilinearly) to the frames as in training.
FOOTAGE = SynthConfig.first_generator(seed=3, train_seqs=1, val_seqs=1, frames=4, size=(64, 64), spike_size=(32, 32),
                                      subframes=32, objects=(1, 1))
SUBFRAMES = 2  # DATA.FLOW_SPIKE_SUBFRAMES: windows per exposure
K = 2  # TFP images per frame


def netg(flow: str) -> dict:
    """A tiny netG of S-VRT's early-fusion family (pase_residual) with ``flow`` (scflow or spynet)."""
    return dict(net_type="vrt", upscale=1, img_size=[2, 64, 64], window_size=[2, 8, 8], depths=[1] * 8,
                indep_reconsts=[7], embed_dims=[16] * 8, num_heads=[2] * 8, pa_frames=2, deformable_groups=2,
                input=dict(strategy="fusion", mode="dual", raw_ingress_chans=3 + K),
                fusion=dict(placement="early", operator="pase_residual", early=dict(frame_contract="collapsed"),
                            operator_params=dict(feature_chans=8, hidden_chans=8)),
                optical_flow=dict(module=flow, checkpoint=None))


def config(root: Path, flow: str = "scflow", clip_len: int = 2) -> Config:
    # DATA.FLOW_SPIKE is set for SpyNet too: the data could give flow_spike, but that model does not take it.
    return load_config({"SEED": 1, "MODEL": {"NETG": netg(flow), "IDENTITY_INIT": False},
                        "DATA": {"ROOT": str(root), "SPIKE_REPR": "tfp", "K": K, "TFP_HALF_WIN_LENGTH": 3,
                                 "CLIP_LEN": clip_len, "CROP_SIZE": 64, "FLOW_SPIKE": "encoding25",
                                 "FLOW_SPIKE_SUBFRAMES": SUBFRAMES}})


def last_pth(cfg: Config, path: Path) -> tuple[torch.nn.Module, Path]:
    """A randomly initialised model of ``cfg`` saved as a last.pth-like single file (weights and config)."""
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg).eval()
    torch.save({"state_dict": model.state_dict(), "config": cfg.to_dict(), "step": 0}, path)
    return model, path


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("flow_spike") / "synth", FOOTAGE)


@pytest.fixture(scope="module")
def prepared(footage, tmp_path_factory) -> Path:
    """FOOTAGE with S-VRT's precomputed val artifacts: encoding25 windows (packed .dat) and TFP images."""
    root = tmp_path_factory.mktemp("flow_spike_prepared") / "synth"
    shutil.copytree(footage, root)
    cfg = config(root)
    for spec in (SpikeRepr.flow_from_config(cfg.DATA), SpikeRepr.from_config(cfg.DATA)):
        prepare_representation(root, spec, splits=("val",), fmt=spec.formats[-1])
    return root


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, str]]:
    """(representation, format or 'computed') of every spike input read through ``ReprSource.read``."""
    seen: list[tuple[str, str]] = []
    read = ReprSource.read

    def recording(self: ReprSource, *args, **kwargs):
        seen.append((self.spec.name, self.fmt or "computed"))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(ReprSource, "read", recording)
    return seen


def restored_by_cli(monkeypatch, ckpt: Path, root: Path, out: Path, *args: str) -> dict[int, torch.Tensor]:
    """Run ``ds-deblur infer`` on the val split; the restored frames (before 8-bit quantisation) by index."""
    restored: dict[int, torch.Tensor] = {}
    restore_sequence = cli.restore_sequence

    def recording(*call_args, **kwargs) -> Iterator[tuple[int, torch.Tensor]]:
        for i, frame in restore_sequence(*call_args, **kwargs):
            restored[i] = frame
            yield i, frame

    monkeypatch.setattr(cli, "restore_sequence", recording)
    argv = ["--ckpt", str(ckpt), "--root", str(root), "--split", "val", "--output", str(out), "--device", "cpu",
            *args]  # frames read ahead by TEST.NUM_WORKERS (2) threads, as by default
    assert cli.main(argv) == 0
    assert len(list((out / "seq_000").glob("*.png"))) == FOOTAGE.frames
    return restored


@torch.no_grad()
def validation_frames(model: torch.nn.Module, val: SpikeDeblurDataset) -> dict[int, torch.Tensor]:
    """What the model gives, called directly, on each clip of the validation dataset ``val``."""
    frames = {}
    for sample in val:
        out = model(sample["blur"][None], sample["spike_vox"][None], sample["flow_spike"][None])[0]
        frames.update(zip(sample["meta"]["frames"].tolist(), out))
    return frames


def assert_same_frames(got: dict[int, torch.Tensor], expected: dict[int, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected) == list(range(FOOTAGE.frames))
    for i in got:
        assert (got[i] - expected[i]).abs().max().item() <= 1e-5, i


@pytest.mark.parametrize("source", ["dat", "artifacts"])
def test_scflow_model_gets_the_flow_spike_of_validation(footage, prepared, source, tmp_path, monkeypatch, reads):
    root = footage if source == "dat" else prepared
    cfg = config(root)
    model, ckpt = last_pth(cfg, tmp_path / "last.pth")
    assert model.needs_flow_spike
    # Temporal windows of 2 frames sharing none: those of the validation dataset (4 frames: clips 0-1 and 2-3).
    got = restored_by_cli(monkeypatch, ckpt, root, tmp_path / "out", "--tile", "2", "0", "0",
                          "--tile-overlap", "0", "0", "0")
    read_by_cli = set(reads)
    assert read_by_cli == ({("encoding25", "computed"), ("tfp", "computed")} if source == "dat"
                           else {("encoding25", "dat"), ("tfp", "npz")})
    val = build_datasets(cfg)[1]
    expected = validation_frames(model, val)
    assert_same_frames(got, expected)
    # The flow spike input matters: without the spike streams' flow the same frames come out otherwise.
    sample = val[0]
    with torch.no_grad():
        blind = model(sample["blur"][None], sample["spike_vox"][None], torch.zeros_like(sample["flow_spike"])[None])
    assert (blind[0, 0] - expected[0]).abs().max().item() > 1e-3


def test_overlapping_windows_take_the_flow_spike_of_their_own_frames(footage, tmp_path, monkeypatch):
    cfg = config(footage)
    model, ckpt = last_pth(cfg, tmp_path / "last.pth")
    got = restored_by_cli(monkeypatch, ckpt, footage, tmp_path / "out")  # windows of 2 frames overlapping by 1
    # The whole sequence as one validation sample; each window is its slice (SUBFRAMES flow windows per frame).
    sample = build_datasets(config(footage, clip_len=FOOTAGE.frames))[1][0]
    ramp = blend_ramp(2, 1, torch.device("cpu"))
    sums, weights = {}, {}
    with torch.no_grad():
        for start in range(FOOTAGE.frames - 1):
            frames = slice(start, start + 2)
            flow = sample["flow_spike"][start * SUBFRAMES:(start + 2) * SUBFRAMES]
            out = model(sample["blur"][None, frames], sample["spike_vox"][None, frames], flow[None])[0]
            for j in range(2):
                sums[start + j] = sums.get(start + j, 0) + out[j] * ramp[j]
                weights[start + j] = weights.get(start + j, 0) + ramp[j]
    assert_same_frames(got, {i: sums[i] / weights[i] for i in sums})


def test_a_model_without_scflow_reads_no_flow_spike(footage, tmp_path, monkeypatch, reads):
    cfg = config(footage, flow="spynet")
    model, ckpt = last_pth(cfg, tmp_path / "last.pth")
    assert not model.needs_flow_spike
    got = restored_by_cli(monkeypatch, ckpt, footage, tmp_path / "out", "--tile", "2", "0", "0",
                          "--tile-overlap", "0", "0", "0")
    assert {name for name, _ in reads} == {"tfp"}  # the data could give encoding25 windows; none are read
    assert_same_frames(got, validation_frames(model, build_datasets(cfg)[1]))


def test_spike_streams_too_short_for_the_flow_windows_are_refused_naming_the_stream(tmp_path, capsys):
    # 16 spike frames per exposure: fewer than the 25 of one encoding25 window, and 2 windows cannot be padded.
    root = generate(tmp_path / "short", SynthConfig(**{**FOOTAGE.__dict__, "subframes": 16}))
    _, ckpt = last_pth(config(root), tmp_path / "last.pth")
    assert cli.main(["--ckpt", str(ckpt), "--root", str(root), "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "model's encoding25 input" in message and "val/seq_000/spike/000000.dat" in message
    assert "16 spike frames are fewer than the 25 of an encoding25 window" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written
