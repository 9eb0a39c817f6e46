"""LOG.TENSORBOARD: false writes no event files; the metrics files, visuals and the bar stay."""
import numpy as np
import pytest

from ds_deblur.run_log import RunLogger, read_train_log


@pytest.mark.parametrize("tensorboard", [True, False])
def test_tensorboard_switch(tmp_path, tensorboard):
    log = RunLogger(tmp_path, True, total_steps=2, start_step=0, tensorboard=tensorboard)
    log.train_step({"step": 1, "loss": 0.5, "lr": 1e-4}, {"train/loss": 0.5})
    metrics = {"psnr_rgb": 30.0, "psnr_y": 31.0, "ssim_y": 0.9, "best_psnr": 30.0}
    log.validation(1, metrics, np.zeros((8, 24, 3), np.uint8), rank=0)
    log.hparams({"lr": 1e-4}, {"hparam/psnr_rgb": 30.0})
    log.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*")) if (tmp_path / "tb").exists() else []
    assert bool(events) == tensorboard
    assert [r["step"] for r in read_train_log(tmp_path)] == [1]
    assert (tmp_path / "metrics/val_step_000001.json").is_file() and (tmp_path / "visuals/step_000001.png").is_file()
