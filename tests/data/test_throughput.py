"""What the loader benchmark measures (never its timings): the bytes a training clip reads."""
import os

import pytest

from ds_deblur.bench import loader_speed
from ds_deblur.data.prepare import prepare
from ds_deblur.data.synth import SynthConfig, generate

# The GoPro spike proportions at a fifth of the size: spikes half the RGB size, 64 spike frames per exposure.
SMALL_GOPRO = SynthConfig.first_generator(seed=2, train_seqs=1, val_seqs=1, frames=5, size=(128, 256),
                                           spike_size=(64, 128), subframes=64, objects=(1, 2))


@pytest.mark.skipif(loader_speed.read_bytes_so_far() is None, reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("cache", [False, True])
def test_a_training_clip_reads_its_frames_and_only_the_crop_of_its_spike_streams(tmp_path, cache):
    root = generate(tmp_path / "gopro", SMALL_GOPRO, layout="gopro")
    prepare(root, k=32)
    times, read, dataset = loader_speed.time_loader(root, crop=32, workers=0, cache=cache, batches=3, warmup=1)
    assert len(times) == 3 and read is not None
    seq = dataset.sequences[0]
    stream = seq.voxel(0) if cache else seq.spike(0)
    streams = loader_speed.CLIP_LEN * os.path.getsize(stream)  # all frames' streams have one size
    files = loader_speed.file_bytes_per_clip(dataset, loader_speed.stored_stream("voxel", cache))
    # The PNGs are read whole (decoding needs them); of the spike streams, only the rows under the 32-pixel crop:
    # 16 + 2 of 64 sensor rows (28%).
    assert files - streams < read < files - 0.6 * streams


@pytest.mark.skipif(loader_speed.read_bytes_so_far() is None, reason="needs Linux's /proc/self/io")
@pytest.mark.parametrize("representation,folder,channels", [("tfp", "tfp_b4_hw20", 4),
                                                            ("raw_window", "raw_window_l21", 21)])
def test_the_benchmark_times_svrts_representations_from_dat_and_artifacts(tmp_path, representation, folder,
                                                                            channels):
    """A smoke run of what ``ds-deblur bench data`` times for TFP and the raw window: first from the ``.dat``
    files (no artifact folder, so the dataset computes them), then from S-VRT's artifacts."""
    root = generate(tmp_path / "gopro", SMALL_GOPRO, layout="gopro")
    prepare(root, k=32)
    for cache in (False, True):
        times, read, dataset = loader_speed.time_loader(root, crop=32, workers=0, cache=cache, batches=2,
                                                        warmup=1, representation=representation)
        assert len(times) == 2 and read is not None and read > 0
        seq = dataset.sequences[0]
        assert (seq.spike_path / folder).is_dir() == cache
        stream = loader_speed.stored_stream(representation, cache)(seq, 0)
        assert stream.parent.name == (folder if cache else "spike") and stream.is_file()
        assert dataset[0]["spike_vox"].shape[1] == channels
