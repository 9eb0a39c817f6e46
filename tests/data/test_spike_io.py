import numpy as np
import pytest

from ds_deblur.data import DatasetError, read_dat, write_dat
from ds_deblur.data.spike_io import dat_frame_count, frame_bytes, open_dat


@pytest.mark.parametrize("size", [(360, 640), (250, 400), (7, 13), (1, 1), (3, 8)])
def test_round_trip(tmp_path, size):
    spikes = np.random.default_rng(0).random((3, *size)) < 0.4
    path = tmp_path / "s.dat"
    write_dat(path, spikes)
    assert path.stat().st_size == 3 * frame_bytes(size) == 3 * -(-size[0] * size[1] // 8)
    back = read_dat(path, size)
    assert back.dtype == bool and back.shape == (3, *size)
    np.testing.assert_array_equal(back, spikes)


def test_bit_layout_by_hand(tmp_path):
    # 4x8 frame = 4 bytes, one byte per stored row; rows are stored bottom row first.
    path = tmp_path / "hand.dat"
    path.write_bytes(bytes([0b00000001, 0, 0, 0b10000100]))
    spikes = read_dat(path, (4, 8))[0]
    # Byte 0 is the bottom row (row 3); its least significant bit is pixel x=0.
    # Byte 3 is the top row (row 0); bits 2 and 7 are pixels x=2 and x=7.
    assert sorted(zip(*np.nonzero(spikes))) == [(0, 2), (0, 7), (3, 0)]


def test_bit_layout_odd_size_pads_each_frame(tmp_path):
    # 3x3 frame = 9 bits -> 2 bytes per frame; pixel 8 of the stored (flipped) frame is bit 0 of byte 1.
    path = tmp_path / "odd.dat"
    path.write_bytes(bytes([0, 0b1, 0b10, 0]))
    spikes = read_dat(path, (3, 3))
    assert list(zip(*np.nonzero(spikes))) == [(0, 0, 2), (1, 2, 1)]


def test_write_matches_hand_bytes(tmp_path):
    frame = np.zeros((1, 2, 8), bool)
    frame[0, 0, 0] = True   # top row, first pixel -> second stored byte, bit 0
    frame[0, 1, 6] = True   # bottom row, pixel 6 -> first stored byte, bit 6
    write_dat(tmp_path / "w.dat", frame)
    assert (tmp_path / "w.dat").read_bytes() == bytes([0b01000000, 0b00000001])


def test_truncated_file_error_names_file_and_sizes(tmp_path):
    path = tmp_path / "cut.dat"
    write_dat(path, np.ones((5, 250, 400), bool))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        read_dat(path, (250, 400))
    message = str(err.value)
    assert str(path) in message and "62400" in message and "12500" in message and "50000" in message


def test_wrong_spike_size_and_empty_file_are_errors(tmp_path):
    path = tmp_path / "s.dat"
    write_dat(path, np.ones((2, 250, 400), bool))
    with pytest.raises(DatasetError, match="360x640"):
        dat_frame_count(path, (360, 640))
    (tmp_path / "empty.dat").write_bytes(b"")
    with pytest.raises(DatasetError, match="size 0 bytes"):
        open_dat(tmp_path / "empty.dat", (4, 8))


def test_write_rejects_non_binary(tmp_path):
    with pytest.raises(ValueError, match="0 and 1"):
        write_dat(tmp_path / "x.dat", np.full((1, 2, 2), 2))
