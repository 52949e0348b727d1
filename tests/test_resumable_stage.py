"""A pre-training stage killed mid-run resumes under `dvc repro`: `models/<variant>` is a persistent output and the
stage runs `fgkv pretrain --resume-if-unchanged`, so the re-run continues from the last checkpoint and ends with the
checkpoint an uninterrupted run writes."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from conftest import ROOT
from test_study_pipeline import micro_params, run

BIN = Path(sys.executable).parent


def _project(work:Path) -> dict:
    "A throwaway study project with the micro profile and a schedule long enough to be interrupted."
    work.mkdir()
    shutil.copyfile(ROOT / 'dvc.yaml', work / 'dvc.yaml')
    shutil.copytree(ROOT / 'nbs/study', work / 'nbs/study')
    os.symlink(ROOT / 'fgkv', work / 'fgkv')
    p = micro_params()
    p['pretrain'].update(epochs=50, max_steps=None, checkpoint_every=1, log_every=1)   # ~100 steps: seconds, but a window to kill in
    (work / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    env = dict(os.environ, MPLBACKEND='Agg', PATH=f'{BIN}{os.pathsep}{os.environ["PATH"]}')
    run([str(BIN / 'fgkv'), 'synth', '--params', 'params.yaml', '--out', 'data/raw', '--key', p['dataset'], '--workers', '2'], work, env)
    run([str(BIN / 'dvc'), 'init', '--no-scm', '-q'], work, env)
    return env


def _step(checkpoint:Path) -> int|None:
    try: return torch.load(checkpoint, map_location='cpu', weights_only=False)['step']
    except Exception: return None   # not written yet


def test_killed_pretrain_stage_resumes_to_the_uninterrupted_checkpoint(tmp_path):
    stage = 'pretrain@mlp'
    whole = tmp_path / 'whole'
    env = _project(whole)
    run([str(BIN / 'dvc'), 'repro', '--quiet', stage], whole, env)
    expected = torch.load(whole / 'models/mlp/checkpoint.pt', map_location='cpu', weights_only=False)
    total = expected['total_steps']
    assert expected['step'] == total >= 10

    cut = tmp_path / 'cut'
    env = _project(cut)
    checkpoint = cut / 'models/mlp/checkpoint.pt'
    proc = subprocess.Popen([str(BIN / 'dvc'), 'repro', '--quiet', stage], cwd=cut, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while (_step(checkpoint) or 0) < 2:   # kill as soon as a few steps are saved: DVC, papermill, the kernel and torchrun with it
        assert proc.poll() is None, f'the stage ended (exit {proc.returncode}) before it could be interrupted'
        assert time.monotonic() < deadline, 'no checkpoint within 10 minutes'
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)   # let the killed process group's last writes land
    interrupted_at = _step(checkpoint)
    assert 2 <= interrupted_at < total, interrupted_at

    run([str(BIN / 'dvc'), 'repro', '--quiet', stage], cut, env)
    log = (cut / 'reports/pretrain/mlp.ipynb').read_text()
    assert 'resuming at step' in log and 'starting afresh' not in log, log[-3000:]
    resumed = torch.load(checkpoint, map_location='cpu', weights_only=False)
    assert resumed['step'] == total
    for part in ('model', 'target'):
        assert resumed[part].keys() == expected[part].keys()
        for k, v in expected[part].items(): assert torch.equal(resumed[part][k], v), f'{part}.{k} differs from the uninterrupted run'
    for state, ref in zip(resumed['optimizer']['state'].values(), expected['optimizer']['state'].values()):
        for k, v in ref.items(): assert torch.equal(torch.as_tensor(state[k]), torch.as_tensor(v)), f'optimizer {k}'

    # the stage is now up to date; a changed pre-training value re-runs it from step 0, and the log says why
    p = yaml.safe_load((cut / 'params.yaml').read_text())
    p['pretrain']['lr'] = p['pretrain']['lr'] / 2
    (cut / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    run([str(BIN / 'dvc'), 'repro', '--quiet', stage], cut, env)
    log = (cut / 'reports/pretrain/mlp.ipynb').read_text()
    assert 'starting afresh (step 0 of' in log and 'other pretrain.lr' in log, log[-3000:]
