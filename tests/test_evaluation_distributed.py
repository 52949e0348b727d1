"""Under torchrun with 2 gloo processes, gathered test scores and retrieval features equal the single-process ones.

The 9 test videos split 5 + 4 over the two processes (an uneven last shard): every video must be counted once.
Run by pytest; the same file is the torchrun worker (`__main__` below)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from test_evaluation_e2e import OVERRIDES, make_checkpoint


def run_all(prepared, ckpt):
    "Everything compared between one process and two: returns plain tensors and dicts."
    from fgkv.config import load_params
    from fgkv.datasets import build_dataset
    from fgkv.checkpoints import load_backbone
    from fgkv.downstream import VideoClassifier, linear_head
    from fgkv.inference import evaluate_classifier, extract_features
    from fgkv.protocols import finetune, linear_probe, retrieval
    from fgkv.config import train_settings
    params = load_params(ROOT / 'params.yaml', [f'prepared={prepared}', *OVERRIDES])   # the manifests are in <prepared>/motion
    train, test = build_dataset(params, 'train'), build_dataset(params, 'test')
    query, gallery = build_dataset(params, 'retrieval'), build_dataset(params, 'retrieval', split='train')
    backbone, _ = load_backbone(ckpt, verbose=False)
    torch.manual_seed(0)
    model = VideoClassifier(backbone, linear_head(backbone.feat_dim, 3))
    result = evaluate_classifier(model, test, batch_size=2)
    feats, labels = extract_features(backbone, query, batch_size=2)
    quick = dict(epochs=1, batch_size=4, lr=0.05)
    return dict(scores=result.scores, labels=result.labels, metrics=result.metrics(), features=feats, feature_labels=labels,
                retrieval=retrieval(backbone, query, gallery, batch_size=3),
                finetune=finetune(backbone, train, test, 3, train_settings('finetune', **quick), eval_batch_size=3),
                cached=linear_probe(backbone, train, test, 3, train_settings('linear', cache_features=True, **quick), eval_batch_size=3))


def test_two_processes_match_one(tmp_path):
    from fgkv.distributed import free_port
    from fgkv.prepare import prepare_dataset
    from fgkv.synth import synthesize_dataset
    synthesize_dataset(tmp_path / 'raw', classes=3, per_class=6, frames=20, size=32, seed=0)
    prepare_dataset('ucf101', tmp_path / 'raw/videos', tmp_path / 'raw/ucfTrainTestlist', 1, tmp_path / 'prepared/motion')
    make_checkpoint(tmp_path / 'ckpt.pt')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}', __file__, tmp_path / 'prepared', tmp_path / 'ckpt.pt', tmp_path]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    ranks = [torch.load(tmp_path / f'rank{i}.pt', weights_only=True) for i in range(2)]
    assert ranks[0]['world_size'] == 2 and ranks[0]['shard'] == 5 and ranks[1]['shard'] == 4
    single = run_all(tmp_path / 'prepared', tmp_path / 'ckpt.pt')
    for got in ranks:
        assert torch.equal(got['labels'], single['labels']) and torch.equal(got['feature_labels'], single['feature_labels'])
        assert torch.allclose(got['scores'], single['scores'], atol=1e-6, rtol=0)
        assert torch.allclose(got['features'], single['features'], atol=1e-6, rtol=0)
        assert got['metrics'] == single['metrics'] and got['retrieval'] == single['retrieval']
        assert got['cached'] == pytest.approx(single['cached'], abs=1e-4)
    assert ranks[0]['finetune'] == ranks[1]['finetune']          # both processes report the same gathered test metrics
    assert ranks[0]['finetune']['num_videos'] == 9


if __name__ == '__main__':
    from fgkv import distributed as dist
    from fgkv.inference import ShardSampler
    prepared, ckpt, out = map(Path, sys.argv[1:4])
    info = dist.init_distributed(backend='gloo')
    try:
        res = run_all(prepared, ckpt)
        res.update(world_size=info.world_size, shard=len(ShardSampler(9, info.rank, info.world_size)))
        torch.save(res, out / f'rank{info.rank}.pt')
    finally: dist.cleanup()
