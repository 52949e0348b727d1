"Every params file and profile the project ships is valid, and the paper-scale files say what the paper and the code say."
import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from fgkv.config import Params, apply_profile, load_params
from fgkv.models import resolve_preset

FILES = [ROOT / 'params.yaml', *sorted((ROOT / 'params').glob('*.yaml'))]


def complete_params_file(path:Path, tmp_path:Path) -> Path:
    "`path` itself when it holds every section; a profile (an overlay) applied to a copy of params.yaml otherwise."
    if set(yaml.safe_load(path.read_text())) >= {f.name for f in dataclasses.fields(Params)}: return path
    shutil.copy(ROOT / 'params.yaml', tmp_path / 'params.yaml')
    assert apply_profile(path, tmp_path / 'params.yaml'), f'{path.name} changes nothing'
    return tmp_path / 'params.yaml'


@pytest.mark.parametrize('path', FILES, ids=lambda p: p.name)
def test_loads_and_every_run_is_valid(path, tmp_path):
    path = complete_params_file(path, tmp_path)
    params = load_params(path)
    for name, overrides in params.study.variants.items(): load_params(path, list(overrides))
    for name, ablation in params.study.ablations.items(): load_params(path, list(ablation.overrides))


def test_paper_and_official_settings():
    paper, official = (load_params(ROOT / f'params/{n}-ucf101-r3d18.yaml') for n in ('paper', 'official'))
    for p in (paper, official):
        assert (p.clips.frames, p.clips.stride, p.clips.crop_size) == (16, 4, 112)
        assert (p.pretrain.batch_size, p.pretrain.epochs, p.pretrain.lr, p.pretrain.warmup_epochs) == (64, 400, 1.2, 35)
    r = {n: resolve_preset(p.model.preset, dataset='ucf101') for n, p in (('paper', paper), ('official', official))}
    assert (r['paper']['scale'], r['paper']['recon'], r['paper']['weight_decay'], r['paper']['backbone']) == (64.0, 'l2', 1e-4, 'r3d18')
    assert (r['official']['scale'], r['official']['recon'], r['official']['weight_decay']) == (16.0, 'cosine', 1e-6)
    k400 = load_params(ROOT / 'params/paper-k400-r3d18.yaml')
    assert (k400.pretrain.batch_size, k400.pretrain.epochs, k400.pretrain.lr) == (256, 100, 2.4)
