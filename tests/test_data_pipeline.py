"`fgkv synth` + `fgkv prepare` produce manifests that the clip datasets read (the command line, end to end)."
import subprocess
import sys

import torch

from conftest import ROOT


def fgkv(*args, cwd):
    r = subprocess.run([sys.executable, '-m', 'fgkv.cli', *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_synth_prepare_dataset(tmp_path):
    from fgkv.config import load_params
    from fgkv.datasets import build_dataset

    fgkv('synth', '--params', ROOT / 'params.yaml', '--out', tmp_path / 'raw', '--key', 'motion', '--classes', 4, '--per-class', 5,
         '--frames', 24, '--size', 32, '--workers', 2, cwd=tmp_path)
    out = fgkv('prepare', '--params', ROOT / 'params.yaml', '--videos', tmp_path / 'raw/motion/videos',
               '--annotations', tmp_path / 'raw/motion/ucfTrainTestlist', '--out', tmp_path / 'prepared/motion', '--workers', 2, cwd=tmp_path)
    assert 'rejected: 0' in out, out
    assert (tmp_path / 'prepared/motion/classes.txt').read_text().count('\n') == 4

    params = load_params(ROOT / 'params.yaml', [f'prepared={tmp_path}/prepared'])
    pretrain = build_dataset(params, 'pretrain')
    assert len(pretrain) + len(build_dataset(params, 'test')) == 20
    loader = torch.utils.data.DataLoader(pretrain, batch_size=4, num_workers=2)
    batch = next(iter(loader))
    c = params.clips
    assert batch['clips'].shape == (4, c.num_clips, 3, c.frames, c.crop_size, c.crop_size)
    assert torch.isfinite(batch['clips']).all()
    assert set(batch['label'].tolist()) <= set(range(4))


def test_prepare_reports_bad_annotations(tmp_path):
    (tmp_path / 'videos').mkdir()
    r = subprocess.run([sys.executable, '-m', 'fgkv.cli', 'prepare', '--dataset', 'ucf101', '--videos', tmp_path / 'videos',
                        '--annotations', tmp_path / 'nowhere', '--split', '1', '--out', tmp_path / 'p',
                        '--min-frames', '1', '--test-fraction', '0.3'], capture_output=True, text=True)
    assert r.returncode != 0
    assert 'nowhere' in r.stderr and 'Traceback' not in r.stderr, r.stderr
