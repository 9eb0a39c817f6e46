"""S-VRT's option files (KAIR-style JSON with comments) load as configs: every mapped option lands on its key, both
kinds of --set apply (ours win), what means nothing here is listed in one warning, credentials never reach the
config, and what ds_deblur cannot do exactly (the LoRA/phase recipe, other schedulers, syntax errors) is an error
naming the file and the option."""
import json
import warnings

import pytest
import torch
import yaml

from ds_deblur.config import ConfigError, load_config, save_config
from ds_deblur.config.kair import is_credential, strip_comments
from ds_deblur.models import build_model
from support.train_utils import REPO

# A small option file in S-VRT's style: // and /* */ comments, a URL inside a string, credentials under logging.
OPTIONS = """{
  // the run's name: the run folder is path.root/task
  "task": "demo_run",
  "model": "vrt",
  "gpu_ids": [0, 1],  // the launcher decides
  "dist": true,
  "scale": 1,
  "n_channels": 3,
  "path": {"root": "experiments", "pretrained_netG": "weights/vrt_gopro.pth", "pretrained_netE": null},
  "datasets": {
    "train": {
      "dataset_type": "TrainDatasetRGBSpike",
      "dataroot_gt": "/data/GOPRO_Large/train_GT",
      "dataroot_lq": "/data/GOPRO_Large/train_GT_blurred",
      "dataroot_spike": "/data/GOPRO_Large_spike_seq/train",
      "meta_info_file": "meta/meta_info_GoPro_train_GT.txt",
      "io_backend": {"type": "lmdb"},
      "num_frame": 6,
      "gt_size": [96, 96],
      "use_hflip": false, "use_rot": true, "random_reverse": true,
      "spike_h": 250, "spike_w": 400,
      "spike_channels": 8,
      "spike": {"reconstruction": {"type": "spikecv_tfp", "num_bins": 8}},
      "tfp_half_win_length": 10,
      "spike_flow": {"representation": "encoding25", "dt": 12, "subframes": 8, "root": "auto",
                     "collapse_policy": "compose"},
      "spike_normalize": {"mean": [0.5, 0.5], "std": [2.0, 2.0]},
      "dataloader_shuffle": true,
      "dataloader_batch_size": 8,
      "dataloader_num_workers": 12,
      "dataloader_prefetch_factor": 3,
      "dataloader_persistent_workers": false,
      "tfp_device": "cpu"
    },
    "test": {
      "dataset_type": "TrainDatasetRGBSpike",
      "dataroot_gt": "/data/GOPRO_Large/test_GT",
      "dataroot_lq": "/data/GOPRO_Large/test_GT_blurred",
      "dataroot_spike": "/data/GOPRO_Large_spike_seq/test",
      "meta_info_file": "meta/meta_info_GoPro_test_GT.txt",
      "io_backend": {"type": "lmdb"},
      "num_frame": -1,
      "tfp_half_win_length": 10,
      "dataloader_batch_size": 1,
      "dataloader_prefetch_factor": 4
    }
  },
  /* the network: carried as it is
     (MODEL.NETG) */
  "netG": {
    "net_type": "vrt",
    "img_size": [6, 96, 96],
    "fusion": {"enable": false, "operator": "mamba", "operator_params": {"token_dim": 48}},
    "optical_flow": {"module": "spynet", "checkpoint": "https://example.org/spynet.pth"}
  },
  "train": {
    "G_lossfn_type": "charbonnier", "G_lossfn_weight": 0.5, "G_charbonnier_eps": 1e-6,
    "G_optimizer_type": "adam", "G_optimizer_lr": 2e-4, "G_optimizer_betas": [0.9, 0.95], "G_optimizer_wd": 0,
    "G_optimizer_clipgrad": null,
    "G_scheduler_type": "CosineAnnealingWarmRestarts", "G_scheduler_periods": 1000, "G_scheduler_eta_min": 1e-7,
    "total_iter": 1000,
    "E_decay": 0.999,
    "fix_iter": 100, "fix_lr_mul": 0.125, "fix_keys": ["spynet", "deform"],
    "checkpoint_save": 200, "checkpoint_test": [250, 500, 750, 1000], "checkpoint_print": 20,
    "manual_seed": 7,
    "use_lora": false, "lora_rank": 8, "freeze_backbone": false, "two_run": {"enable": false},
    "amp": {"enable": true, "dtype": "bfloat16"}
  },
  "val": {"size_patch_testing": 64, "size_patch_overlapping": 16, "num_frame_testing": 12},
  "logging": {"use_tensorboard": false, "use_wandb": true, "wandb_api_key": "FAKE-KEY-0",
              "logfire_token": "FAKE-TOK-1"},
  "runtime": {"cpu": {"torch_num_threads": 8}}
}
"""
SECRETS = ("FAKE-KEY-0", "FAKE-TOK-1", "FAKE-NET-2", "FAKE-SET-3")


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture
def options(tmp_path):
    path = tmp_path / "options" / "gopro_demo.json"
    path.parent.mkdir()
    path.write_text(OPTIONS)
    return path


def load(path, overrides=()):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_config(path, overrides)


def failure(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as err:
        load(path, overrides)
    return str(err.value)


def test_every_mapped_option_lands_on_its_key(options):
    cfg = load(options)
    data, train, log = cfg.DATA, cfg.TRAIN, cfg.LOG
    assert cfg.MODEL.NETG["optical_flow"]["checkpoint"] == "https://example.org/spynet.pth"  # // in a string stays
    assert cfg.MODEL.NETG["fusion"]["operator_params"] == {"token_dim": 48}  # not a credential
    assert (cfg.MODEL.INIT_WEIGHTS, cfg.MODEL.INIT_EMA_WEIGHTS) == ("weights/vrt_gopro.pth", None)
    # the roots of both splits, with {split} where they differ
    assert (data.ROOT, data.TRAIN_SPLIT, data.VAL_SPLIT) == ("", "train", "test")
    assert data.GT_ROOT == "/data/GOPRO_Large/{split}_GT" and data.LQ_ROOT == "/data/GOPRO_Large/{split}_GT_blurred"
    assert data.SPIKE_ROOT == "/data/GOPRO_Large_spike_seq/{split}"
    assert data.META_INFO_FILE == "meta/meta_info_GoPro_{split}_GT.txt" and data.IO_BACKEND == "lmdb"
    assert (data.CLIP_LEN, data.CROP_SIZE, data.HFLIP, data.ROTATE, data.RANDOM_REVERSE) == (6, 96, False, True, True)
    assert (data.SPIKE_REPR, data.K, data.TFP_HALF_WIN_LENGTH, data.SPIKE_SIZE) == ("tfp", 8, 10, [250, 400])
    assert (data.FLOW_SPIKE, data.FLOW_SPIKE_DT, data.FLOW_SPIKE_SUBFRAMES) == ("encoding25", 12, 8)
    assert data.FLOW_SPIKE_POLICY == "compose_subframes"
    assert (data.NORM.MEAN, data.NORM.STD, data.IMAGE_EXTS, data.SPIKE_DIR) == (0.5, 2.0, [".png"], "spike")
    loader = cfg.DATALOADER
    assert (loader.TOTAL_WORKERS, loader.NUM_WORKERS, loader.PERSISTENT_WORKERS) == (12, None, False)
    assert (loader.TRAIN_PREFETCH_FACTOR, loader.VAL_PREFETCH_FACTOR) == (3, 4)
    assert train.BATCH_SIZE == 8  # one process: all of S-VRT's batch
    assert (train.OPTIM.TYPE, train.OPTIM.LR, train.OPTIM.BETAS, train.OPTIM.WEIGHT_DECAY) == \
        ("adamw", 2e-4, [0.9, 0.95], 0.0)
    assert (train.SCHED.TYPE, train.SCHED.WARMUP_STEPS, train.SCHED.MIN_LR) == ("cosine", 0, 1e-7)
    assert (train.TOTAL_STEPS, train.EMA_DECAY, train.MAX_GRAD_NORM, cfg.SEED) == (1000, 0.999, 0.0, 7)
    # S-VRT counts from 1 and releases at fix_iter: its iterations 1-99 are fixed, TRAIN.FIX_ITER's 99 steps.
    assert (train.FIX_ITER, train.FIX_LR_MUL, train.FIX_KEYS) == (99, 0.125, ["spynet", "deform"])
    assert (train.VAL_TILE_SIZE, train.VAL_TILE_OVERLAP) == (64, 16)
    assert cfg.LOSS.CHARBONNIER.DELTA == pytest.approx(1e-3)  # S-VRT adds eps = DELTA^2 under the root
    assert cfg.LOSS.CHARBONNIER.WEIGHT == 0.5
    assert (log.SAVE_DIR, log.SAVE_EVERY_STEPS, log.VAL_EVERY_STEPS, log.LOG_EVERY_STEPS) == \
        ("experiments/demo_run", 200, 250, 20)
    assert log.TENSORBOARD is False and log.VAL_USE_EMA is True


def test_svrt_defaults_apply_to_options_the_file_leaves_out(options):
    text = OPTIONS.replace('"G_optimizer_betas": [0.9, 0.95], ', "").replace('"spike_channels": 8,', "")
    options.write_text(text.replace('"num_bins": 8', '"middle_tfp_center": 44'))
    cfg = load(options)
    assert cfg.TRAIN.OPTIM.BETAS == [0.9, 0.999] and cfg.DATA.K == 4


def test_the_batch_is_divided_over_the_ranks(options, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load(options).TRAIN.BATCH_SIZE == 4
    monkeypatch.setenv("WORLD_SIZE", "3")
    message = failure(options)
    assert "datasets.train.dataloader_batch_size = 8 is the batch of all ranks" in message and "3" in message
    assert load(options, ["TRAIN.BATCH_SIZE=2"]).TRAIN.BATCH_SIZE == 2


def test_overrides_of_options_apply_before_the_mapping(options):
    cfg = load(options, ["netG.fusion.operator=gated", "datasets.train.gt_size=64", "train.total_iter=10",
                         "train.G_scheduler_periods=10", "path.root=/runs", "datasets.train.use_rot=false"])
    assert cfg.MODEL.NETG["fusion"]["operator"] == "gated" and cfg.MODEL.NETG["img_size"] == [6, 96, 96]
    assert (cfg.DATA.CROP_SIZE, cfg.DATA.ROTATE, cfg.TRAIN.TOTAL_STEPS) == (64, False, 10)
    assert cfg.LOG.SAVE_DIR == "/runs/demo_run"


def test_our_keys_win_over_the_options(options):
    cfg = load(options, ["train.checkpoint_save=7", "LOG.SAVE_EVERY_STEPS=5", "TRAIN.TOTAL_STEPS=20",
                         "LOG.SAVE_DIR=/out", "DATA.ROOT=/data/gopro_spike", "DATA.CROP_SIZE=128"])
    assert (cfg.TRAIN.TOTAL_STEPS, cfg.LOG.SAVE_EVERY_STEPS, cfg.LOG.SAVE_DIR) == (20, 5, "/out")
    assert cfg.DATA.CROP_SIZE == 128
    # DATA.ROOT reads S-VRT's layout under ROOT: the separate roots are not mapped
    assert (cfg.DATA.ROOT, cfg.DATA.GT_ROOT, cfg.DATA.LQ_ROOT, cfg.DATA.SPIKE_ROOT) == \
        ("/data/gopro_spike", None, None, None)
    assert cfg.DATA.META_INFO_FILE == "meta/meta_info_GoPro_{split}_GT.txt"


def test_our_keys_stand_in_for_options_that_have_no_counterpart(options):
    assert "train.G_scheduler_type 'MultiStepLR' is not supported" in failure(
        options, ["train.G_scheduler_type=MultiStepLR"])
    cfg = load(options, ["train.G_scheduler_type=MultiStepLR", "TRAIN.SCHED.WARMUP_STEPS=10",
                         "datasets.train.gt_size=[128, 96]", "DATA.CROP_SIZE=96"])
    assert (cfg.TRAIN.SCHED.WARMUP_STEPS, cfg.TRAIN.SCHED.MIN_LR, cfg.DATA.CROP_SIZE) == (10, 0.0, 96)


def test_ignored_options_are_listed_once(options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(options)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    message = messages[0]
    assert message.startswith(f"{options}: S-VRT options ") and "ignored under DeepSpeed" in message
    for name in ("model", "gpu_ids", "dist", "runtime", "datasets.train.tfp_device", "datasets.test.num_frame",
                 "train.amp", "train.lora_rank", "val.num_frame_testing", "logging.use_wandb"):
        assert f" {name}," in message or f" {name} " in message, name
    for name in ("train.total_iter", "datasets.train.num_frame", "netG", "task", "wandb_api_key", "logfire_token"):
        assert name not in message.replace("datasets.test.num_frame", ""), name
    assert not any(secret in message for secret in SECRETS)


def test_credentials_never_reach_the_config(options, tmp_path):
    options.write_text(OPTIONS.replace('"net_type": "vrt",', '"net_type": "vrt", "hub_token": "FAKE-NET-2",'))
    cfg = load(options, ["logging.swanlab_api_key=FAKE-SET-3"])
    dumped = yaml.safe_dump(cfg.to_dict())
    save_config(cfg, tmp_path / "run" / "config.yaml", deepspeed={"train_micro_batch_size_per_gpu": 8})
    saved = (tmp_path / "run" / "config.yaml").read_text()
    for text in (dumped, saved):
        assert not any(secret in text for secret in SECRETS)
        assert "api_key" not in text and "hub_token" not in text
    assert load_config(tmp_path / "run" / "config.yaml").to_dict() == cfg.to_dict()  # and it loads back


@pytest.mark.parametrize("name, credential", [
    ("wandb_api_key", True), ("swanlab_api_key", True), ("logfire_token", True), ("db_password", True),
    ("client_secret", True), ("apiKey", True), ("token_dim", False), ("token_stride", False), ("use_wandb", False),
])
def test_credential_names(name, credential):
    assert is_credential(name) is credential


def test_a_two_run_file_read_as_one_config_says_how(options):
    message = failure(options, ["train.two_run.enable=true"])
    assert message.startswith(f"{options}: ") and "--set train.two_run.enable=false" in message
    assert "two runs, which ds_deblur/train.py trains one after the other" in message


FUSED = ["netG.fusion.enable=true", "train.phase1_fusion_aux_loss_weight=1.0"]
WARMUP = ["train.fusion_passthrough_loss_weight=0.3", "train.phase2_fusion_aux_loss_weight=0.2",
          "train.fusion_warmup={head_only_iters: 40, passthrough_weight_start: 0.2, update_penalty_weight: 0.01}"]


def test_fix_iter_with_early_fusion_is_phase_one_with_its_losses(options):
    cfg = load(options, FUSED + WARMUP)
    assert (cfg.TRAIN.FUSION_FIRST, cfg.TRAIN.FIX_ITER, cfg.TRAIN.HEAD_ONLY_STEPS) == (True, 99, 39)
    fusion = cfg.LOSS.FUSION  # passthrough_weight_end falls back on fusion_passthrough_loss_weight, as in S-VRT
    assert (fusion.PHASE1_WEIGHT, fusion.PASSTHROUGH_START, fusion.PASSTHROUGH_END, fusion.UPDATE_PENALTY,
            fusion.PHASE2_WEIGHT) == (1.0, 0.2, 0.3, 0.01, 0.2)
    assert load(options, FUSED + ["train.fix_iter=0"]).TRAIN.FUSION_FIRST is False
    no_phase_one = load(options, FUSED + ["train.fix_iter=1"]).TRAIN  # S-VRT's iteration 1 is already phase 2
    assert (no_phase_one.FUSION_FIRST, no_phase_one.FIX_ITER, no_phase_one.FIX_KEYS) == (False, 0, ["spynet", "deform"])
    assert load(options, FUSED + ["TRAIN.FUSION_FIRST=false"]).TRAIN.FUSION_FIRST is False  # ours win
    plain = load(options, WARMUP)  # no early fusion: S-VRT has no fused frames, the options mean nothing
    assert (plain.TRAIN.FUSION_FIRST, plain.LOSS.FUSION.PHASE2_WEIGHT) == (False, 0.0)


@pytest.mark.parametrize("lora, phase2_lora, fix_iter, frozen", [
    (True, True, 100, True),  # phase 2 trains the adapters and fix_keys only
    (True, False, 100, False),  # phase 2 trains everything (S-VRT's netG.requires_grad_(True))
    (False, True, 100, False),  # phase2_lora_mode needs LoRA
    (True, False, 0, True),  # no phases: frozen for the whole run, fix_keys included
])
def test_freeze_backbone_lasts_as_long_as_svrt_keeps_it(options, lora, phase2_lora, fix_iter, frozen):
    cfg = load(options, FUSED + [f"train.use_lora={str(lora).lower()}", "train.freeze_backbone=true",
                                 f"train.phase2_lora_mode={str(phase2_lora).lower()}", f"train.fix_iter={fix_iter}"])
    assert cfg.TRAIN.FREEZE_BACKBONE is frozen
    assert not lora or cfg.MODEL.LORA_FREEZE_BASE is frozen
    # fix_keys train under freeze_backbone once fix_iter releases them; without fix_iter they stay frozen
    assert cfg.TRAIN.FIX_KEYS == ([] if frozen and not fix_iter else ["spynet", "deform"])


def test_phase_wise_sizes_map_to_phase_one_keys(options):
    cfg = load(options, ["datasets.train.gt_size=[128, 96]", "datasets.train.dataloader_batch_size=[8, 4]"])
    assert (cfg.DATA.PHASE1_CROP_SIZE, cfg.DATA.CROP_SIZE) == (128, 96)
    assert (cfg.TRAIN.PHASE1_BATCH_SIZE, cfg.TRAIN.BATCH_SIZE) == (8, 4)
    no_phases = load(options, ["datasets.train.gt_size=[128, 96]", "train.fix_iter=0", "train.fix_keys=[]"])
    assert (no_phases.DATA.PHASE1_CROP_SIZE, no_phases.DATA.CROP_SIZE) == (None, 96)  # every step is phase 2's


def test_lora_and_freeze_backbone_map_onto_our_keys(options):
    plain = load(options).MODEL
    assert (plain.LORA_RANK, load(options).TRAIN.FREEZE_BACKBONE) == (0, False)
    lora = load(options, ["train.use_lora=true", "train.lora_rank=4", "train.lora_target_modules=[qkv]"])
    assert (lora.MODEL.LORA_RANK, lora.MODEL.LORA_ALPHA, lora.MODEL.LORA_TARGETS) == (4, 16, ["qkv"])
    assert lora.MODEL.LORA_FREEZE_BASE is False  # S-VRT trains the adapted layers' weights without freeze_backbone
    frozen = load(options, ["train.use_lora=true", "train.freeze_backbone=true", "train.fix_iter=0"])
    assert (frozen.MODEL.LORA_RANK, frozen.MODEL.LORA_TARGETS) == (8, ["qkv", "proj"])  # S-VRT's defaults
    assert frozen.MODEL.LORA_FREEZE_BASE is True and frozen.TRAIN.FREEZE_BACKBONE is True
    assert load(options, ["train.use_lora=true", "MODEL.LORA_RANK=2"]).MODEL.LORA_RANK == 2  # ours win


def test_partial_load_selects_loading_by_name_and_shape(options):
    assert load(options).MODEL.INIT_PARTIAL is False
    assert load(options, ["train.partial_load=true"]).MODEL.INIT_PARTIAL is True


@pytest.mark.parametrize("text, line", [
    ('{\n  "netG": {"net_type": "vrt"}  // the network\n  "train": {}\n}\n', 3),  # a missing comma
    ('{\n  /* a comment\n     of two lines */\n  "netG": {"a": "x // y"}\n  "train": {}\n}\n', 5),
    ('{\n  "netG": {},\n  /* never closed\n  "train": {}\n}\n', 3),
])
def test_syntax_errors_name_the_file_and_the_line(tmp_path, text, line):
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert failure(path).startswith(f"{path}:{line}:")


def test_comments_are_blanked_outside_strings_only():
    text = '{"a": "http://x /* y */", "b": "q\\" // z"} // c\n/* d\n*/'
    assert json.loads(strip_comments(text, "t")) == {"a": "http://x /* y */", "b": 'q" // z'}
    assert strip_comments(text, "t").count("\n") == 2


@pytest.mark.parametrize("overrides, needle", [
    (["train.G_scheduler_type=MultiStepLR"], "use CosineAnnealingWarmRestarts"),
    (["train.G_scheduler_periods=500"], "train.G_scheduler_periods = 500 differs from train.total_iter = 1000"),
    (["train.G_optimizer_type=sgd"], "train.G_optimizer_type 'sgd' is not supported: use adam or adamw"),
    (["train.G_optimizer_wd=0.01"], "train.G_optimizer_wd = 0.01 with G_optimizer_type adam is Adam's L2 penalty"),
    (["train.G_lossfn_type=l1"], "train.G_lossfn_type 'l1' is not supported"),
    (["datasets.train.gt_size=[128, 96, 64]"], "datasets.train.gt_size = [128, 96, 64] must be one value or "
                                               "[phase 1, phase 2]"),
    (["train.checkpoint_test=[300, 500]"], "train.checkpoint_test = [300, 500] is not every N steps"),
    (["path.pretrained_netG=auto"], "path.pretrained_netG 'auto' (the newest checkpoint of the run folder)"),
    (["datasets.test.tfp_half_win_length=5"], "datasets.test.tfp_half_win_length = 5 differs from "
                                              "datasets.train.tfp_half_win_length = 10"),
    (["datasets.test.dataroot_gt=/other/GoPro11/test_GT"], "differ in more than the split's name"),
    (["datasets.train.spike_flipud=false"], "datasets.train.spike_flipud = false is not supported"),
    (["datasets.train.rgb_normalize=imagenet"], 'datasets.train.rgb_normalize = "imagenet" is not supported'),
    (["datasets.train.spike_normalize.std=[1.0, 2.0]"], "datasets.train.spike_normalize.std = [1.0, 2.0]"),
    (["datasets.train.spike_reconstruction=snn"], "datasets.train.spike_reconstruction 'snn' is not supported"),
    (["datasets.train.dataset_type=TrainDataset"], "datasets.train.dataset_type 'TrainDataset' is not supported"),
    (["datasets.train.num_frame=1"], "datasets.train.num_frame must be >= 2, got 1"),  # our limit, their name
])
def test_what_has_no_counterpart_is_an_error_naming_the_option(options, overrides, needle):
    message = failure(options, overrides)
    assert message.startswith(f"{options}: ") and needle in message


def test_raw_windows(options):
    raw = ["datasets.train.spike.representation=raw_window", "datasets.train.spike.raw_window_length=9"]
    cfg = load(options, [*raw, "datasets.train.spike_channels=9"])
    assert (cfg.DATA.SPIKE_REPR, cfg.DATA.RAW_WINDOW_LENGTH, cfg.DATA.spike_channels) == ("raw_window", 9, 9)
    assert "differs from the raw window's length 9" in failure(options, [*raw, "datasets.train.spike_channels=7"])


def test_a_json_file_without_netg_is_an_error(tmp_path):
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"DATA": {"ROOT": "/d"}}))
    message = failure(path)
    assert message.startswith(f"{path}: expected an S-VRT option file") and "netG" in message


def test_a_yaml_config_is_read_as_before(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("DATA:\n  ROOT: /d\nTRAIN:\n  TOTAL_STEPS: 10\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cfg = load_config(path, ["TRAIN.BATCH_SIZE=2"])
    same = {"DATA": {"ROOT": "/d"}, "TRAIN": {"TOTAL_STEPS": 10, "BATCH_SIZE": 2}}
    assert cfg.to_dict() == load_config(same).to_dict()
    assert (cfg.MODEL.NETG, cfg.MODEL.INIT_WEIGHTS, cfg.MODEL.INIT_EMA_WEIGHTS) == (None, None, None)
    assert "MODEL.NETG must be a mapping, got 3" in failure(path, ["MODEL.NETG=3"])


def test_the_learning_cpu_demo_file_reads_as_its_comments_say():
    # ds_configs/svrt_middle_gated_cpu.json (launch/demo_svrt.sh): 16 TFP images of 5 spike frames per frame,
    # normalised, read in the training process; S-VRT's gated operator after stages 1 and 7.
    cfg = load_config(REPO / "ds_configs/svrt_middle_gated_cpu.json", ["DATA.ROOT=/unused"])
    assert (cfg.DATA.SPIKE_REPR, cfg.DATA.K, cfg.DATA.TFP_HALF_WIN_LENGTH) == ("tfp", 16, 2)
    assert (cfg.DATA.NORM.MEAN, cfg.DATA.NORM.STD) == (0.5, 0.2) and cfg.DATALOADER.TOTAL_WORKERS == 0
    fusion = cfg.MODEL.NETG["fusion"]
    assert (fusion["placement"], fusion["operator"], fusion["inject_stages"]) == ("middle", "gated", [1, 7])
    assert cfg.TRAIN.TOTAL_STEPS == 600
    model = build_model(cfg)
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 16, 64, 64))
    assert out.shape == (1, 2, 3, 64, 64) and torch.isfinite(out).all()
