"Every evaluation protocol end to end on synthetic videos and a tiny backbone loaded from a fake pre-training checkpoint."
import json
import math

import pytest
import torch

from conftest import ROOT

TINY = {'name': 'r3d18', 'kwargs': {'width': 0.125, 'layers': [1, 1, 1, 1]}}
# small clips, but the full test protocol: 10 clips x 3 crops per test video
OVERRIDES = ['clips.frames=4', 'clips.stride=2', 'clips.crop_size=32', 'downstream.short_side=[32,40]',
             'downstream.test_short_side=32', 'downstream.test_clips=10', 'downstream.test_crops=3',
             'downstream.retrieval_clips=10']


def make_checkpoint(path, prefix='online.backbone.', seed=0):
    "A checkpoint laid out as `fgkv.trainers` saves it: the online learner under `model`, the EMA target apart."
    from fgkv.backbones import create_backbone
    torch.manual_seed(seed)
    online = create_backbone(TINY['name'], **TINY['kwargs'])
    model = {prefix + k: v for k, v in online.state_dict().items()}
    model.update({'online.projector.0.weight': torch.randn(16, online.feat_dim), 'online.predictor.0.weight': torch.randn(16, 16),
                  'memory.keys': torch.randn(8, 16)})
    torch.save({'format': 'fgkv-checkpoint-v1', 'kind': 'byol', 'step': 5, 'epoch': 1, 'backbone': TINY,
                'backbone_prefix': prefix, 'model': model,
                'target': {'backbone.' + k: v.clone() for k, v in online.state_dict().items()},
                'optimizer': {}, 'rng': {}, 'config': {}, 'git_commit': None}, path)
    return online


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from fgkv.config import load_params
    from fgkv.datasets import build_dataset
    from fgkv.prepare import prepare_dataset
    from fgkv.synth import synthesize_dataset
    work = tmp_path_factory.mktemp('eval')
    synthesize_dataset(work / 'raw', classes=3, per_class=6, frames=20, size=32, seed=0)
    prepare_dataset('ucf101', work / 'raw/videos', work / 'raw/ucfTrainTestlist', 1, work / 'prepared/motion')
    params = load_params(ROOT / 'params.yaml', [f'prepared={work}/prepared', *OVERRIDES])
    make_checkpoint(work / 'ckpt.pt')
    sets = {mode: build_dataset(params, mode) for mode in ('train', 'test', 'retrieval')}
    sets['gallery'] = build_dataset(params, 'retrieval', split='train')
    classes = (work / 'prepared/motion/classes.txt').read_text().split()
    return dict(work=work, params=params, ckpt=work / 'ckpt.pt', classes=classes, **sets)


def test_checkpoint_loading_reports_and_rejects(data, capsys):
    from fgkv.checkpoints import load_backbone
    backbone, report = load_backbone(data['ckpt'])
    out = capsys.readouterr().out
    assert 'used:    72 tensors of the online backbone (online.backbone.*)' in out, out
    assert 'online.projector.* (1), online.predictor.* (1), memory.keys (1)' in out and 'EMA target network (72 tensors)' in out, out
    assert len(report.used) == 72 and len(report.ignored) == 3
    with pytest.raises(ValueError, match='backbone mismatch'):
        load_backbone(data['ckpt'], expect={'name': 'r3d18', 'kwargs': {'width': 0.25}})


def test_test_views_are_deterministic(data):
    from fgkv.checkpoints import load_backbone
    from fgkv.downstream import VideoClassifier, linear_head
    from fgkv.inference import evaluate_classifier
    test = data['test']
    assert test[0]['clips'].shape == (30, 3, 4, 32, 32)
    backbone, _ = load_backbone(data['ckpt'], verbose=False)
    torch.manual_seed(0)
    model = VideoClassifier(backbone, linear_head(backbone.feat_dim, 3))
    a = evaluate_classifier(model, test, batch_size=4)
    b = evaluate_classifier(model, test, batch_size=2, workers=2)      # other batching, worker processes
    assert torch.equal(a.scores, b.scores) and torch.equal(a.labels, b.labels)


def test_every_protocol_end_to_end(data):
    from fgkv.checkpoints import load_backbone
    from fgkv.config import train_settings
    from fgkv.protocols import finetune, linear_probe, nonlinear_probe, retrieval, write_metrics
    work, classes = data['work'], data['classes']
    backbone, _ = load_backbone(data['ckpt'], verbose=False)
    quick = dict(epochs=2, batch_size=4, lr=0.05)
    common = dict(eval_batch_size=9, class_names=classes)
    runs = {
        'linear': linear_probe(backbone, data['train'], data['test'], 3, train_settings('linear', **quick), out=work / 'linear', **common),
        'linear_official': linear_probe(backbone, data['train'], data['test'], 3,
                                        train_settings('linear', 'official', warmup_epochs=1, **quick), **common),
        'linear_cached': linear_probe(backbone, data['train'], data['test'], 3,
                                      train_settings('linear', cache_features=True, **quick), **common),
        'nonlinear': nonlinear_probe(backbone, data['train'], data['test'], 3, train_settings('nonlinear', **quick), **common),
        'finetune': finetune(backbone, data['train'], data['test'], 3, train_settings('finetune', **quick), **common),
        'finetune_official': finetune(backbone, data['train'], data['test'], 3,
                                      train_settings('finetune', 'official', warmup_epochs=1, precise_bn_batches=2, **quick), **common),
        'retrieval': retrieval(backbone, data['retrieval'], data['gallery'], batch_size=9),
        'retrieval_30views': retrieval(backbone, data['test'], data['gallery'], batch_size=9),
    }
    metrics = {f'{run}/{k}': v for run, m in runs.items() for k, v in m.items()}
    write_metrics(work / 'metrics.json', metrics)
    back = json.loads((work / 'metrics.json').read_text())
    assert back == pytest.approx(metrics)
    for run in runs:
        if run.startswith('retrieval'):
            assert back[f'{run}/num_queries'] == 9 and back[f'{run}/num_gallery'] == 9
            recalls = [back[f'{run}/R@{k}'] for k in (1, 5, 10, 20, 50)]
            assert recalls == sorted(recalls) and recalls[-1] == 100.0          # R@k grows with k; k >= 9 covers the gallery
        else:
            assert back[f'{run}/num_videos'] == 9 and back[f'{run}/top5'] == 100.0   # 3 classes: top-5 is everything
            assert 0 <= back[f'{run}/top1'] <= 100 and math.isfinite(back[f'{run}/train_loss'])
    assert sorted(p.name for p in (work / 'linear').iterdir()) == ['confusion.csv', 'confusion.png', 'per_class.csv', 'scores.pt']


def test_data_efficiency_end_to_end(data):
    from fgkv.checkpoints import load_backbone
    from fgkv.config import train_settings
    from fgkv.protocols import data_efficiency
    backbone, _ = load_backbone(data['ckpt'], verbose=False)
    m = data_efficiency(backbone, data['train'], data['test'], 3, fractions=(0.34, 1.0), protocol='finetune',
                        s=train_settings('finetune', epochs=1, batch_size=3, lr=0.05), eval_batch_size=9)
    assert m['34%/num_train_videos'] == 3 and m['100%/num_train_videos'] == 9
    assert m['34%/num_videos'] == m['100%/num_videos'] == 9


def test_embed_writes_features(data):
    from fgkv.inference import embed, load_embeddings, save_embeddings
    c, d = data['params'].clips, data['params'].downstream
    args = dict(frames=c.frames, stride=c.stride, num_clips=d.retrieval_clips, crop_size=c.crop_size, short_side=d.test_short_side)
    paths, feats = embed(data['ckpt'], data['work'] / 'raw/videos', batch_size=6, **args)
    assert len(paths) == 18 and feats.shape == (18, 64)
    save_embeddings(data['work'] / 'emb.pt', paths, feats)
    p2, f2 = load_embeddings(data['work'] / 'emb.pt')
    assert p2 == paths and torch.equal(f2, feats)
    # the same videos through the retrieval dataset give the same features
    from fgkv.checkpoints import load_backbone
    from fgkv.inference import extract_features
    q, _ = extract_features(load_backbone(data['ckpt'], verbose=False)[0], data['retrieval'])
    first = str(data['retrieval'].records[0].path)
    assert torch.allclose(q[0], feats[paths.index(first)], atol=1e-5)


@pytest.mark.parametrize('kind', ['byol', pytest.param('memdpc', marks=pytest.mark.slow)])
def test_loads_a_trainer_checkpoint(data, kind, tmp_path):
    "A checkpoint written by `fgkv.trainers.pretrain` (one step) loads, keeps the online backbone only and retrieves."
    trainers = pytest.importorskip('fgkv.trainers')
    from fgkv.config import load_params
    from fgkv.checkpoints import load_backbone
    from fgkv.protocols import retrieval
    params = load_params(ROOT / 'params.yaml', [f'prepared={data["work"]}/prepared', *OVERRIDES, 'pretrain.batch_size=4',
                                                'pretrain.workers=0', f'model.kind={kind}', 'model.width=0.125',
                                                'memdpc.width=0.125', 'memdpc.crop_size=32', 'memdpc.block_frames=2', 'memdpc.blocks=5'])
    trainers.pretrain(params, tmp_path / 'run', max_steps=1, progress=False)
    backbone, report = load_backbone(tmp_path / 'run/checkpoint.pt', expect=params.memdpc.backbone if kind == 'memdpc' else params.model.backbone)
    assert report.kind == kind and report.step == 1 and report.used and report.ignored
    assert not any(k.startswith('target.') for k in report.used)
    r = retrieval(backbone, data['retrieval'], data['gallery'], batch_size=9)
    assert r['num_queries'] == 9 and r['R@50'] == 100.0


def test_memdpc_reads_out_its_context(data, tmp_path):
    "A MemDPC checkpoint is read as MemDPC reads it: f + ConvGRUs over block sequences, BN → dropout → FC; `encoder` pools f alone."
    from fgkv.config import load_params
    from fgkv.protocols import run_evaluation
    from fgkv.trainers import pretrain
    over = [f'prepared={data["work"]}/prepared', *OVERRIDES, 'pretrain.batch_size=4', 'pretrain.workers=0', 'model.kind=memdpc',
            'memdpc.width=0.125', 'memdpc.crop_size=32', 'memdpc.block_frames=2', 'memdpc.blocks=5', 'evaluate.workers=0',
            'evaluate.linear.epochs=1', 'evaluate.linear.batch_size=4', 'evaluate.linear.warmup_epochs=0', 'evaluate.eval_batch_size=4',
            'downstream.test_clips=2', 'downstream.retrieval_clips=2']
    params = load_params(ROOT / 'params.yaml', over)
    pretrain(params, tmp_path / 'run', max_steps=1, progress=False)
    ckpt = tmp_path / 'run/checkpoint.pt'
    context = run_evaluation(params, ckpt, tmp_path / 'context', protocols=['knn', 'linear', 'retrieval'], verbose=False)
    encoder = run_evaluation(load_params(ROOT / 'params.yaml', over + ['evaluate.memdpc_readout=encoder']), ckpt, tmp_path / 'encoder',
                             protocols=['knn'], verbose=False)
    assert context['knn/num_train_videos'] == encoder['knn/num_train_videos'] == context['retrieval/num_gallery'] == 9
    assert context['linear/num_videos'] == 9 and 0 <= context['linear/top1'] <= 100
    scores = torch.load(tmp_path / 'context/linear/scores.pt', weights_only=True)['scores']
    assert scores.shape == (9, 3) and torch.allclose(scores.sum(1), torch.ones(9))
