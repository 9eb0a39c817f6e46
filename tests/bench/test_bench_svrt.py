"""``ds-deblur bench svrt``: its command line, and one short real run of two models (the structure and sanity of
what it reports, never its timings)."""
from __future__ import annotations

import argparse

import pytest
import torch

from ds_deblur.bench import svrt as svrt_bench
from ds_deblur.bench.__main__ import main


def test_help_lists_the_models_and_exits_0(capsys):
    with pytest.raises(SystemExit) as done:
        main(["svrt", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--operators" in out and "dual_scale_temporal_mamba" in out and "rgb_only" in out


@pytest.fixture
def one_thread():
    """One torch thread for the run (two threads on a loaded 2-core machine make the first step take ~20 s),
    given back afterwards: run() sets the process's thread count."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_short_run_counts_parameters_and_shards_the_server_recipe(tmp_path, one_thread):
    # Two of the cheapest models (collapsed: VRT restores T frames) and one round keep this to a few seconds.
    args = argparse.Namespace(models=["pase_residual", "rgb_only"], rounds=1, threads=one_thread,
                              server_config=svrt_bench.SERVER_CONFIG, world_sizes=[1, 2, 4, 8])
    results = svrt_bench.run(args, tmp_path)
    assert results["settings"]["threads"] == 1
    rows = {r["name"]: r for r in results["rows"]}
    assert list(rows) == ["pase_residual", "rgb_only"]
    for name, row in rows.items():
        model = svrt_bench.build_variant(name)
        assert row["params"] == sum(p.numel() for p in model.parameters())
        assert len(row["times_ms"]) == 1 and row["forward_backward_ms"]["min"] > 0
        assert row["vrt_frames"] == 2
    assert 0 < rows["pase_residual"]["fusion_params"] < rows["pase_residual"]["params"]
    assert rows["rgb_only"]["fusion_params"] == 0

    memory = results["memory"]
    server = svrt_bench.server_model(svrt_bench.SERVER_CONFIG, svrt_bench.FULL_SETS)  # its LoRA off: trained whole
    assert memory["params"] == sum(p.numel() for p in server.parameters()) > 10_000_000
    for precision, bytes_per_param in svrt_bench.BYTES_PER_PARAM.items():
        per_rank = [m for m in memory["rows"] if m["precision"] == precision]
        assert [m["world_size"] for m in per_rank] == [1, 2, 4, 8]
        totals = [m["total_mib"] for m in per_rank]
        assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1]
        # ZeRO 2: every rank keeps all the weights; one rank holds everything, unsharded.
        assert all(m["parameters_mib"] == per_rank[0]["parameters_mib"] for m in per_rank)
        assert per_rank[0]["total_mib"] == pytest.approx(memory["params"] * sum(bytes_per_param.values()) / 2 ** 20)
        assert per_rank[-1]["optimizer_state_mib"] == pytest.approx(per_rank[0]["optimizer_state_mib"] / 8)

    lora = memory["lora"]
    adapted = svrt_bench.server_model(svrt_bench.SERVER_CONFIG, svrt_bench.LORA_SETS)
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert lora["trained_params"] == sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    fix_keys = ("spynet.", "pa_deform.")  # S-VRT's phase 2 trains them beside the fusion and the adapters
    assert trained and all(".lora_" in n or n.startswith(("fusion_operator.", "fusion_adapter.")) or
                           any(key in n for key in fix_keys) for n in trained)
    assert any(".lora_" in n for n in trained) and any("pa_deform." in n for n in trained)
    assert lora["params"] == memory["params"] + sum(adapted.get_parameter(n).numel() for n in trained if ".lora_" in n)
    for full, adapters in zip(memory["rows"], lora["rows"]):  # the same weights, far less of everything else
        assert adapters["optimizer_state_mib"] == pytest.approx(full["optimizer_state_mib"] * lora["trained_params"]
                                                                / memory["params"])
        assert adapters["total_mib"] < full["total_mib"]
    text = svrt_bench.table(results)
    assert "pase_residual" in text and "ZeRO 2" in text and "Not included: activations" in text
    assert "With LoRA adapters on a frozen backbone" in text
