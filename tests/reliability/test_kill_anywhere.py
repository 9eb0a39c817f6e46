"""Kill anywhere: 2-rank training (ZeRO 2 and ZeRO 3) SIGKILLed at random moments, some inside a save and some
inside a background export of last.pth/best.pth, restarted each time with ``--resume auto``, must end exactly where
an uninterrupted run ends: the same per-step log and final weights."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ds_deblur.ckpt.tags import committed_step, newest_complete, read_latest, step_tag, tag_problem
from ds_deblur.run_log import read_train_log
from ds_deblur.testing.faults import KILL_IN_EXPORT_ENV, KILL_IN_SAVE_ENV, KILL_RECORD_ENV
from reliability_settings import SEED, TRIALS
from support.train_utils import ONE_VAL_FRAME, REPO, ds_json, output_of, run_train, train_command

STEPS = 10
SETS = [f"TRAIN.TOTAL_STEPS={STEPS}", "LOG.VAL_EVERY_STEPS=5", "LOG.SAVE_EVERY_STEPS=2", "LOG.KEEP_LAST=2",
        *ONE_VAL_FRAME]  # validation (and its best tag) between saves, one frame a sequence
# Kills per run before it may finish: spreads the trials over several runs. A run whose last step is already saved
# is not killed again: its relaunches could only be killed in start-up, and such kills would pile up at its end.
KILLS_PER_RUN = 4
# Where a kill lands: at a random moment, inside a save (its files written, not committed), or inside the background
# export of a tag (the new single file written, not renamed); with these probabilities.
KINDS = {"moment": 0.45, "save": 0.3, "export": 0.25}
KILL_ENV = {"save": KILL_IN_SAVE_ENV, "export": KILL_IN_EXPORT_ENV}


def logged_step(out: Path) -> int:
    log = read_train_log(out) if (out / "metrics/train_log.jsonl").is_file() else []
    return log[-1]["step"] if log else 0


def launch(data: Path, out: Path, config: str, env: dict, log: Path) -> subprocess.Popen:
    """The trainer under the deepspeed launcher in a session of its own, so a kill takes launcher and ranks."""
    cmd = train_command(data, out, config, SETS, 2, ["--resume", "auto"])
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    with open(log, "a") as handle:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_at_random_moment(proc: subprocess.Popen, out: Path, rng: random.Random, resumes_at: int,
                           log: Path) -> bool:
    """SIGKILL the whole job (launcher and ranks: its process group) a random time after a random step of this
    launch was logged (or at once, if it draws the resumed step: a kill during start-up). True when the launcher
    died of that SIGKILL; False if it finished first; any other exit fails the test."""
    target, launched = rng.randint(resumes_at, STEPS), time.time()
    train_log = out / "metrics/train_log.jsonl"

    def reached() -> bool:  # the log of this launch: rewritten at its start, so older lines do not count
        return target == resumes_at or (train_log.is_file() and train_log.stat().st_mtime > launched
                                        and logged_step(out) >= target)
    deadline = time.monotonic() + 600
    while proc.poll() is None and not reached() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))  # anywhere in the next step, its validation or its save
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    code = proc.wait()
    assert code in (0, -signal.SIGKILL), f"launch exited {code}, not killed by the test:\n{tail(log)}"
    return code == -signal.SIGKILL


def injected_kill(proc: subprocess.Popen, record: Path, kind: str, tag: str, log: Path) -> bool:
    """Whether the launch died of the SIGKILL its fault variable asked for (a rank writes it to ``record`` right
    before killing itself; the launcher's own exit code may be that of the other rank's broken connection).
    False if it finished without reaching the tag; any other exit fails the test."""
    code = proc.wait(timeout=600)
    kills = [json.loads(line) for line in record.read_text().splitlines()] if record.is_file() else []
    if code == 0:
        assert kills == [], kills
        return False
    assert [(k["where"], k["tag"]) for k in kills] == [(kind, tag)], f"launch exited {code}:\n{tail(log)}"
    return True


def tail(log: Path) -> str:
    return log.read_text()[-4000:]


def resumable_step(ckpts: Path) -> int:
    """What --resume auto will start from, after checking that nothing left looks valid but is not."""
    if not ckpts.is_dir():
        return 0
    latest = read_latest(ckpts)
    if latest is not None:
        assert tag_problem(ckpts / latest) is None, f"latest names {latest}, which is not complete"
    for name in ("last.pth", "best.pth"):
        if (ckpts / name).is_file():
            torch.load(ckpts / name, weights_only=True)  # whole, never torn
    tag = newest_complete(ckpts)
    return committed_step(ckpts / tag) if tag else 0


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_killed_anywhere_then_resumed_equals_an_uninterrupted_run(data, tmp_path, record, stage):
    """Kills are counted only when observed as SIGKILLs (the test's own, or the one a rank recorded); the row's
    data_lost (committed steps a kill took away) and recovered (runs bit-identical to the reference) are measured."""
    config = ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage)
    reference = tmp_path / "reference"
    proc = run_train(data, reference, config, sets=SETS)
    assert proc.returncode == 0, output_of(proc)
    want_log = read_train_log(reference)
    want = torch.load(reference / "ckpts/last.pth", weights_only=True)["state_dict"]
    rng, log = random.Random(SEED + stage), tmp_path / "launches.log"
    kills = runs = recovered = data_lost = recomputed = launches = 0
    kinds = {kind: 0 for kind in KINDS}
    moments = []  # (last step logged, step resumed from, kind) per kill
    while kills < TRIALS:
        out, runs, run_kills, committed = tmp_path / f"run{runs}", runs + 1, 0, 0
        while True:  # one run: relaunched with --resume auto until it completes
            done, resumes_at = logged_step(out), resumable_step(out / "ckpts")
            committed = max(committed, resumes_at)
            kill = kills < TRIALS and run_kills < KILLS_PER_RUN and resumes_at < STEPS
            kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0] if kill else None
            tag = rng.choice([step_tag(s) for s in range(done // 2 * 2 + 2, STEPS + 1, 2)] + ["best"])
            launches, kill_record = launches + 1, tmp_path / f"kill_record_{launches}.jsonl"
            env = {KILL_ENV[kind]: tag, KILL_RECORD_ENV: str(kill_record)} if kind in KILL_ENV else {}
            proc = launch(data, out, config, env, log)
            if not kill:  # enough kills for this run: let it finish and be compared
                killed = proc.wait(timeout=600) != 0
                assert not killed, tail(log)
            elif kind in KILL_ENV:  # it dies where the variable says (or finishes, when that tag is never due)
                killed = injected_kill(proc, kill_record, kind, tag, log)
            else:
                killed = kill_at_random_moment(proc, out, rng, resumes_at, log)
            if not killed:
                break
            kills, run_kills, kinds[kind] = kills + 1, run_kills + 1, kinds[kind] + 1
            moments.append((logged_step(out), resumable_step(out / "ckpts"), kind))
            recomputed += max(moments[-1][0] - moments[-1][1], 0)
            data_lost += max(committed - moments[-1][1], 0)  # a committed step the kill took away
        got = torch.load(out / "ckpts/last.pth", weights_only=True)["state_dict"]
        same = read_train_log(out) == want_log and all(torch.equal(got[k], want[k]) for k in want)
        recovered += same  # every step's loss, LR, grad norm and the final weights: bitwise
    record({"area": f"kill anywhere (SIGKILL, 2 ranks, ZeRO {stage})", "trials": kills,
            "faults": f"{kills} kills ({kinds['save']} inside a save, {kinds['export']} inside a background export), "
                      f"seed {SEED + stage}", "recovered": f"{recovered}/{runs} runs", "data_lost": data_lost,
            "notes": f"data_lost: committed steps lost to a kill; {recomputed} steps recomputed in all; {recovered} "
                     f"of {runs} runs equal to the reference bit for bit",
            "kills": [{"logged_step": a, "resumed_from": b, "kind": k} for a, b, k in moments]})
    assert data_lost == 0 and recovered == runs, (data_lost, recovered, runs, moments)
