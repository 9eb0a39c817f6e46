"""``ds-deblur bench infer``: its options and its table (its timings are measured, never tested)."""
from ds_deblur.bench import infer as infer_bench
from ds_deblur.bench.__main__ import main as bench_main


def test_frames_must_pair_with_presets(capsys):
    assert bench_main(["infer", "--presets", "tiny", "--frames", "2", "3"]) == 1
    assert "one count per preset" in capsys.readouterr().err


def test_table_rows_per_preset():
    run = {"preset": "tiny", "parameters": 1.9e6, "frames": 4, "time_per_frame_s": 12.5,
           "wall_time_per_frame_s": 13.0, "peak_memory_mb": 2300.0}
    lines = infer_bench.table({"runs": [run, {**run, "preset": "base", "parameters": 23.7e6}]}).splitlines()
    assert len(lines) == 4 and lines[2].split()[:3] == ["tiny", "1.9", "M"] and "2,300 MiB" in lines[2]
    assert lines[3].startswith("base")
