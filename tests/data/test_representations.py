"""S-VRT's spike representations (tfp, raw_window, encoding25) against their definitions, the .dat orientation
against SpikeCV's reader, and the artifacts' names and checks."""
import numpy as np
import pytest
import torch

from ds_deblur.config import load_config
from ds_deblur.data.representations import (SpikeRepr, artifact_dir, artifact_path, encoding25, raw_window,
                                            read_artifact, tfp, write_artifact)
from ds_deblur.data.spike_io import read_dat, read_dat_frames, write_dat
from ds_deblur.errors import DatasetError
from support import svrt_spike_reference as ref

SIZE = (8, 16)  # whole-byte rows, as the real 360x640 sensor


def spikes(frames: int, size=SIZE, seed: int = 0) -> np.ndarray:
    """A 0/1 stream whose pixels fire at different rates, so every image of every window differs."""
    rates = np.linspace(0.05, 0.95, size[0] * size[1]).reshape(size)
    return (np.random.default_rng([seed, frames]).random((frames, *size)) < rates).astype(np.uint8)


def test_our_reader_is_spikecv_with_flipud(tmp_path):
    """S-VRT reads .dat with SpikeCV and flipud=True; read_dat gives exactly that (no flip to add): bit p % 8 of
    byte p // 8, least significant first, rows stored bottom-up."""
    stream = spikes(3, seed=1)
    path = tmp_path / "a.dat"
    write_dat(path, stream)
    raw = path.read_bytes()
    np.testing.assert_array_equal(read_dat(path, SIZE), ref.spikecv_matrix(raw, *SIZE, flipud=True))
    assert not np.array_equal(read_dat(path, SIZE), ref.spikecv_matrix(raw, *SIZE, flipud=False))
    # The file's first bit (byte 0, bit 0) is the bottom-left pixel of frame 0 as both readers give it.
    one = tmp_path / "one.dat"
    one.write_bytes(bytes([1]) + bytes(SIZE[0] * SIZE[1] // 8 - 1))
    assert np.argwhere(read_dat(one, SIZE)).tolist() == [[0, SIZE[0] - 1, 0]]


@pytest.mark.parametrize("size", [SIZE, (10, 13)])
def test_read_dat_frames_reads_a_box_of_a_span(tmp_path, size):
    stream = spikes(12, size)
    path = tmp_path / "a.dat"
    write_dat(path, stream)
    part = read_dat_frames(path, size, (2, 3, 5, 9), frames=(4, 10))
    assert part.dtype == np.uint8
    np.testing.assert_array_equal(part, stream[4:10, 2:7, 3:12])
    np.testing.assert_array_equal(read_dat_frames(path, size), stream)
    with pytest.raises(ValueError, match="not inside"):
        read_dat_frames(path, size, (0, 8, 5, 9))


@pytest.mark.parametrize("frames", [56, 64])
@pytest.mark.parametrize("num_bins,half_win", [(4, 20), (1, 20), (7, 3), (2, 0)])
def test_tfp_is_svrts(frames, num_bins, half_win):
    stream = spikes(frames)
    out = tfp(stream, num_bins, half_win)
    assert out.dtype == np.uint8 and out.shape == (num_bins, *SIZE)
    np.testing.assert_array_equal(out, ref.tfp(stream, num_bins, half_win))


@pytest.mark.parametrize("frames,windows", [(56, [(0, 41), (1, 42), (15, 56), (16, 56)]),
                                            (64, [(0, 41), (4, 45), (20, 61), (24, 64)])])
def test_tfp_clamps_centres_and_cuts_the_last_window(frames, windows):
    """K=4, hw=20: the segment centres are clamped to [20, T - 20]; at T - 20 the window has only 40 frames."""
    spec = SpikeRepr("tfp", num_bins=4, half_win=20)
    assert spec.windows(frames) == windows
    stream = spikes(frames)
    last = stream[windows[-1][0]:].astype(np.float32).mean(axis=0) * np.float32(255)
    np.testing.assert_array_equal(tfp(stream, 4, 20)[-1], last.astype(np.uint8))


@pytest.mark.parametrize("half_win", range(0, 65))
def test_tfp_rounds_as_torchs_mean_for_every_count(half_win):
    """Every count 0..n of windows of n = 2hw + 1 and of the cut n = 2hw frames: float32 count / n * 255, as
    torch's CPU mean computes it (a reciprocal would differ, e.g. for 41 of 41)."""
    total = 2 * half_win + 1
    # Pixel j fires at frames 1..j; the last pixel at every frame.
    pixels = [(np.arange(total) >= 1) & (np.arange(total) <= j) for j in range(total)] + [np.ones(total, bool)]
    stream = np.stack(pixels, axis=1)[:, None, :].astype(np.uint8)
    starts = (0, 1) if half_win else (0, 0)  # the second centre is clamped to hw + 1: its window is cut
    assert SpikeRepr("tfp", num_bins=2, half_win=half_win).windows(total) == [(s, total) for s in starts]
    out = tfp(stream, 2, half_win)
    for image, start in zip(out, starts):
        expected = (torch.from_numpy(stream[start:]).float().mean(dim=0) * 255).numpy().astype(np.uint8)
        np.testing.assert_array_equal(image, expected)


def test_tfp_refuses_a_short_stream_naming_file_and_key(tmp_path):
    path = tmp_path / "short.dat"
    write_dat(path, spikes(40))
    with pytest.raises(DatasetError, match=r"short\.dat: 40 spike frames.*DATA\.TFP_HALF_WIN_LENGTH.*at most 19"):
        SpikeRepr("tfp", num_bins=4, half_win=20).from_dat(path, SIZE)


@pytest.mark.parametrize("frames", [56, 64, 21])
@pytest.mark.parametrize("length", [21, 1, 9])
def test_raw_window_is_svrts(frames, length):
    stream = spikes(frames)
    out = raw_window(stream, length)
    assert out.dtype == np.uint8 and out.shape == (length, *SIZE)
    np.testing.assert_array_equal(out, ref.raw_window(stream, length))


@pytest.mark.parametrize("length,message", [(20, "positive odd"), (0, "positive odd"), (57, "at most 55")])
def test_raw_window_refuses_what_svrt_refuses(tmp_path, length, message):
    path = tmp_path / "a.dat"
    write_dat(path, spikes(56))
    with pytest.raises(DatasetError, match=f"{message}.*DATA.RAW_WINDOW_LENGTH|DATA.RAW_WINDOW_LENGTH.*{message}"):
        SpikeRepr("raw_window", window_length=length).from_dat(path, SIZE)


@pytest.mark.parametrize("frames", [56, 64, 25])
@pytest.mark.parametrize("subframes", [4, 3, 1])
def test_encoding25_is_svrts(frames, subframes):
    stream = spikes(frames)
    out = encoding25(stream, subframes)
    assert out.dtype == np.uint8
    assert out.shape == ((subframes, 25, *SIZE) if subframes > 1 else (25, *SIZE))
    np.testing.assert_array_equal(out, ref.encoding25(stream, subframes))


def test_encoding25_centres_round_half_to_even():
    # S=3 over [12, 51]: 31.5 rounds to 32.
    assert SpikeRepr("encoding25", subframes=3).windows(64) == [(0, 25), (20, 45), (39, 64)]


@pytest.mark.parametrize("frames", [20, 19])
def test_encoding25_pads_a_short_stream_with_one_window(frames):
    stream = spikes(frames)
    np.testing.assert_array_equal(encoding25(stream, 1), ref.encoding25(stream, 1))
    zero = encoding25(stream, 1, short_policy="pad_zero")
    assert not zero[0].any() and not zero[-1].any()
    with pytest.raises(DatasetError, match="fewer than the 25"):
        encoding25(stream, 1, short_policy="strict")
    with pytest.raises(DatasetError, match="DATA.FLOW_SPIKE_SUBFRAMES"):
        encoding25(stream, 4)


@pytest.mark.parametrize("spec", [SpikeRepr("tfp"), SpikeRepr("tfp", num_bins=1, half_win=5),
                                  SpikeRepr("raw_window", window_length=21), SpikeRepr("encoding25"),
                                  SpikeRepr("encoding25", subframes=1)])
@pytest.mark.parametrize("size", [(16, 24), (10, 12)])
def test_from_dat_of_a_box_reads_only_the_span_and_equals_the_crop(tmp_path, spec, size):
    stream = spikes(64, size)
    path = tmp_path / "a.dat"
    write_dat(path, stream)
    box = (3, 2, 5, 9)
    np.testing.assert_array_equal(spec.from_dat(path, size, box), spec.from_frames(stream)[..., 3:8, 2:11])
    first, end = spec.span(64)
    np.testing.assert_array_equal(spec.from_frames(stream[first:end], 64, first), spec.from_frames(stream))


def test_folder_names_are_svrts(tmp_path):
    assert artifact_dir(tmp_path, SpikeRepr("tfp", num_bins=4, half_win=20)) == tmp_path / "tfp_b4_hw20"
    assert artifact_dir(tmp_path, SpikeRepr("raw_window", window_length=21)) == tmp_path / "raw_window_l21"
    assert artifact_dir(tmp_path, SpikeRepr("encoding25", dt=10, subframes=1)) == tmp_path / "encoding25_dt10"
    assert artifact_dir(tmp_path, SpikeRepr("encoding25", dt=7, subframes=4)) == tmp_path / "encoding25_dt7_s4"
    assert artifact_path(tmp_path, SpikeRepr("tfp"), "000012", "npz") == tmp_path / "tfp_b4_hw20/000012.npz"


def test_from_config():
    cfg = load_config({"DATA": {"ROOT": "x", "SPIKE_REPR": "tfp", "K": 4}})
    assert SpikeRepr.from_config(cfg.DATA).dir_name == "tfp_b4_hw20"
    cfg = load_config({"DATA": {"ROOT": "x", "SPIKE_REPR": "raw_window", "FLOW_SPIKE": "encoding25",
                                "FLOW_SPIKE_SUBFRAMES": 4}})
    assert SpikeRepr.from_config(cfg.DATA).dir_name == "raw_window_l41"
    assert SpikeRepr.flow_from_config(cfg.DATA).dir_name == "encoding25_dt10_s4"


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_artifacts_read_back_whole_and_boxed(tmp_path, fmt):
    spec = SpikeRepr("tfp", num_bins=4, half_win=20)
    values = tfp(spikes(64), 4, 20)
    path = tmp_path / f"a.{fmt}"
    write_artifact(path, values)
    np.testing.assert_array_equal(read_artifact(path, spec.shape(SIZE)), values)
    np.testing.assert_array_equal(read_artifact(path, spec.shape(SIZE), box=(1, 2, 3, 4)), values[:, 1:4, 2:6])
    np.testing.assert_array_equal(spec.to_float(values), values.astype(np.float32) / 255)


def test_packed_encoding25_reads_back(tmp_path):
    spec = SpikeRepr("encoding25", subframes=4)
    values = encoding25(spikes(56), 4)
    write_artifact(tmp_path / "a.dat", values)
    np.testing.assert_array_equal(read_artifact(tmp_path / "a.dat", spec.shape(SIZE)), values)
    with pytest.raises(DatasetError, match=r"a\.dat: .* bytes, expected"):
        read_artifact(tmp_path / "a.dat", SpikeRepr("encoding25", subframes=3).shape(SIZE))


@pytest.mark.parametrize("stored,expected_shape,message", [
    (np.zeros((4, *SIZE), np.float64), (4, *SIZE), "float64 array"),
    (np.zeros((4, *SIZE), np.int16), (4, *SIZE), "int16 array"),
    (np.zeros((3, *SIZE), np.uint8), (4, *SIZE), r"shape \(3, 8, 16\), expected uint8 or float32 of shape "
                                                  r"\(4, 8, 16\)"),
])
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_wrong_artifacts_are_refused_naming_the_file(tmp_path, stored, expected_shape, message, fmt):
    path = tmp_path / f"000003.{fmt}"
    write_artifact(path, stored)
    with pytest.raises(DatasetError, match=f"000003.{fmt}: .*{message}"):
        read_artifact(path, expected_shape)


def test_missing_and_unreadable_artifacts_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="missing spike artifact .*none.npy"):
        read_artifact(tmp_path / "none.npy", (1, 1, 1))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz: unreadable"):
        read_artifact(tmp_path / "bad.npz", (1, 1, 1))
