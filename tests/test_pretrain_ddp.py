"The pre-training engine under torchrun: 2 gloo processes with synchronised BN equal 1 process (same global batch)."
import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

TINY = ['decode.cache_in_memory=true', 'clips.frames=4', 'clips.crop_size=32', 'model.width=0.125',
        'model.num_slots=32', 'model.num_concepts=32', 'model.proj_hidden=64', 'model.proj_dim=32', 'model.pred_hidden=64',
        'model.query_hidden=32', 'model.dict_hidden=32', 'pretrain.batch_size=8', 'pretrain.workers=0',
        'pretrain.log_every=1', 'pretrain.epochs=2',
        # 4 frames at stride 2: at stride 1 the frames of these tiny 32-px clips barely differ, some channels' batch
        # variance is ~0, and batch norm's 1/std turns the float rounding of the two reductions into 1e-3 differences
        'clips.stride=2',
        # LARS, as the papers train: Adam (the embedded default) scales each update by 1/sqrt(its running squared
        # gradient), so a bias whose true gradient is zero (a Linear before BatchNorm) steps by ±lr on rounding noise
        'pretrain.optimizer=lars', 'pretrain.lr=1.2', 'pretrain.warmup_epochs=1']


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    from fgkv.prepare import prepare_dataset
    from fgkv.synth import synthesize_dataset
    work = tmp_path_factory.mktemp('data')
    synthesize_dataset(work / 'raw', classes=4, per_class=8, frames=24, size=32, seed=0)
    prepare_dataset('ucf101', work / 'raw/videos', work / 'raw/ucfTrainTestlist', 1, work / 'prepared/motion')
    return work / 'prepared'


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _pretrain(out, prepared, nproc, extra=(), steps=3):
    args = ['pretrain', '--params', str(ROOT / 'params.yaml'), '--out', str(out), '--max-steps', str(steps), '--no-progress',
            '--set', f'prepared={prepared}', *[a for s in TINY + list(extra) for a in ('--set', s)]]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    if nproc == 1: cmd = [sys.executable, '-m', 'fgkv.cli', *args]
    else: cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
                 f'--master_port={_free_port()}', '-m', 'fgkv.cli', *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return torch.load(out / 'checkpoint.pt', weights_only=True)


@pytest.mark.parametrize('predictor', ['fgkv', 'mlp'])
def test_two_processes_equal_one(tmp_path, prepared, predictor):
    # two steps: float rounding differences (reduction order) then grow chaotically with every step,
    # fastest through the concept softmax at τ = 0.05; after one step they are ~1e-7
    one = _pretrain(tmp_path / 'one', prepared, 1, [f'model.predictor={predictor}'], steps=2)
    two = _pretrain(tmp_path / 'two', prepared, 2, [f'model.predictor={predictor}'], steps=2)
    assert one['step'] == two['step'] == 2
    worst = max((one[p][k].float() - two[p][k].float()).abs().max().item()
                for p in ('model', 'target') for k in one[p] if one[p][k].is_floating_point())
    assert worst < 1e-4, worst
    assert set(one['model']) == set(two['model'])       # the same keys: synchronised BN is swapped back on save


MEMDPC = ['model.kind=memdpc', 'memdpc.width=0.125', 'memdpc.blocks=4', 'memdpc.block_frames=2', 'memdpc.pred_steps=1',
          'memdpc.crop_size=32', 'memdpc.num_slots=16', 'pretrain.optimizer=adam', 'pretrain.lr=0.001', 'pretrain.warmup_epochs=0']


def test_memdpc_keeps_batchnorm_per_replica(tmp_path, prepared):
    "MemDPC under DDP: plain BN per process (the authors' DataParallel), the checkpoint holds rank 0's running statistics."
    two = _pretrain(tmp_path / 'two', prepared, 2, MEMDPC, steps=2)
    assert two['step'] == 2 and two['kind'] == 'memdpc'
    stats = [v for k, v in two['model'].items() if k.endswith('running_var')]
    assert stats and all(torch.isfinite(v).all() and (v != 1).any() for v in stats)   # updated: BN ran in training mode
