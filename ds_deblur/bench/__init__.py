"""Benchmarks (scripts, not tests): ``ds-deblur bench NAME [options] --out FILE.json``.

engine      samples/s of the trainer at ZeRO 0-3 against a plain PyTorch DDP loop (interleaved runs)
memory      per-rank parameter, gradient, master-weight and optimizer bytes held by the engine, ZeRO 0-3 x ranks
checkpoint  save/load speed against one torch.save; single-file converter and weights export against zero_to_fp32
data        training-loader clips/s against what the training step consumes; .dat -> voxel MB/s
model       forward and forward+backward time and peak memory of the presets, activation checkpointing on/off
infer       time per frame and peak memory of ds-deblur inference.cli on 1280x720 frames, tiny and base, tiled
ablation    the demo trained with and without the spike branch: PSNR/SSIM of blurry input, RGB only, RGB + spike
svrt        S-VRT's fusion operators at the demo size: parameters, fwd+bwd time; a server recipe's ZeRO 2 bytes per rank
precision   CPU training step in fp32, DeepSpeed's bf16 engine and bf16 autocast per preset (the CPU defaults)

Each prints a table and writes JSON holding the machine, versions, settings and every raw timing.
"""
