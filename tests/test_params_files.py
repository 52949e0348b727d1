"Every params file and profile the project ships is valid, and the paper-scale files say what the paper and the code say."
import shutil

import pytest

from conftest import ROOT
from fgkv.config import apply_profile, load_params

FILES = [ROOT / 'params.yaml', *sorted((ROOT / 'params').glob('*.yaml'))]


@pytest.mark.parametrize('path', FILES, ids=lambda p: p.name)
def test_loads_and_every_run_is_valid(path):
    params = load_params(path)
    assert params.evaluate.preset == params.model.preset, 'pre-trained by one source (paper or code), evaluated by the other'
    for name, overrides in params.study.variants.items(): load_params(path, [*overrides])
    for name, ablation in params.study.ablations.items(): load_params(path, [*params.study.ablation_schedule, *ablation.overrides])


@pytest.mark.parametrize('path', FILES[1:], ids=lambda p: p.name)
def test_applying_a_profile_gives_what_loading_it_gives(path, tmp_path):
    "`fgkv profile X` then `dvc repro` runs what `load_params(X)` describes, whether X extends params.yaml or another file."
    shutil.copy(ROOT / 'params.yaml', tmp_path / 'params.yaml')
    assert apply_profile(path, tmp_path / 'params.yaml'), f'{path.name} changes nothing'
    assert load_params(tmp_path / 'params.yaml') == load_params(path)


def test_paper_and_official_settings():
    paper, official = (load_params(ROOT / f'params/{n}-ucf101-r3d18.yaml') for n in ('paper', 'official'))
    for p in (paper, official):
        assert (p.clips.frames, p.clips.stride, p.clips.crop_size) == (16, 4, 112)
        assert (p.pretrain.batch_size, p.pretrain.epochs, p.pretrain.lr, p.pretrain.warmup_epochs) == (64, 400, 1.2, 35)
    m = paper.model
    assert (m.scale, m.recon, m.weight_decay, m.backbone, m.num_slots) == (64.0, 'l2', 1e-4, 'r3d18', 4096)
    m = official.model
    assert (m.scale, m.recon, m.weight_decay, m.backbone, m.num_slots) == (16.0, 'cosine', 1e-6, 'r3d18_official', 4096)
    assert (paper.evaluate.finetune.mixup_alpha, official.evaluate.finetune.mixup_alpha) == (0.0, 0.8)
    assert (paper.model.nesterov, official.model.nesterov) == (False, True)   # LARS as cited vs SOLVER.NESTEROV
    r21d = load_params(ROOT / 'params/paper-ucf101-r2plus1d18.yaml')
    assert (r21d.model.backbone, r21d.model.num_slots) == ('r2plus1d18', 4096)
    assert load_params(ROOT / 'params/paper-ucf101-r2plus1d18.yaml', ['model.preset=official']).model.num_slots == 2048
    k400 = load_params(ROOT / 'params/paper-k400-r3d18.yaml')
    assert (k400.pretrain.batch_size, k400.pretrain.epochs, k400.pretrain.lr) == (256, 100, 2.4)
    slow = load_params(ROOT / 'params/paper-k400-slow_r18.yaml')
    assert (slow.model.stem_pool, load_params(ROOT / 'params/paper-k400-slow_r18.yaml', ['model.preset=official']).model.stem_pool) == (None, None)   # K400: basic_stem
    assert slow.evaluate.datasets == ("ucf101", "hmdb51")   # Kinetics-400 pre-training, UCF101 and HMDB51 read-outs (Table 1)
    assert (slow.data.name, slow.model.backbone, slow.clips.frames, slow.clips.stride, slow.pretrain.batch_size) == ('kinetics400', 'slow_r18', 8, 8, 256)
