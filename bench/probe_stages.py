"""How much class information the pooled features of each backbone stage carry (a diagnostic, not a test).

    python bench/probe_stages.py [--params params.yaml] [--set KEY=VALUE ...] CHECKPOINT [CHECKPOINT ...]

CHECKPOINT is a pre-training checkpoint or `random` (the backbone of params.yaml, randomly initialised with
evaluate.seed). For each, and for each stage of the backbone (stem, layer1 ... layer4), the stage's output is
average-pooled over time and space (all stages from one forward pass) and over the `downstream.retrieval_clips` un-augmented views of a video
(the retrieval transform), on the train and test manifests of the prepared dataset. Two read-outs per stage:

  linear   test top-1 (%) of the linear probe's head (`evaluate.linear` settings, as `fgkv evaluate` trains it
           on cached features) on features standardised with the train statistics, so stages of any scale
           read out alike
  R@1      (%) test videos searching the train videos by cosine similarity

A pixel baseline comes first: a 4x4x4 RGB histogram of the same views (square-rooted), read out the same way,
which says how much of the class is in the colours alone. The last stage's row is the feature the paper's
protocols use.
"""
import argparse
import functools
from pathlib import Path

import torch

from fgkv.config import load_params
from fgkv.datasets import build_dataset
from fgkv.checkpoints import load_backbone
from fgkv.downstream import linear_head, train_head_on_features
from fgkv.inference import map_videos
from fgkv.metrics import retrieval_recall
from fgkv.protocols import backbone_spec


def colour_histogram(clips, mean, std, bins=4):
    "(N, 3, T, H, W) clips normalised with per-channel `mean`, `std` -> (N, bins**3) square-rooted RGB histograms."
    mean, std = (torch.tensor(v, dtype=clips.dtype).view(1, 3, 1, 1, 1) for v in (mean, std))
    q = ((clips*std + mean).clamp(0, 1 - 1e-6)*bins).long()
    idx = ((q[:, 0]*bins + q[:, 1])*bins + q[:, 2]).flatten(1)
    counts = torch.zeros(len(idx), bins**3).scatter_add_(1, idx, torch.ones(idx.shape))
    return (counts/idx.shape[1]).sqrt()


def pooled_stages(backbone, clips):
    "clips (N, 3, T, H, W) -> [(N, C_stage)]: every top-level stage's output pooled over T, H, W (one forward pass)."
    pooled = []
    for module in backbone.children():
        clips = module(clips)
        pooled.append(clips.mean(dim=(2, 3, 4)))
    return pooled


def features(fn, splits):
    "{split: (features (N, D), labels (N,))} of `fn` over every video's views."
    with torch.no_grad(): return {s: map_videos(fn, ds, device='cpu') for s, ds in splits.items()}


def read_out(train, test, num_classes, settings):
    "(linear %, R@1 %) on `test` of a head fitted on `train`; both are (features, labels)."
    (xtr, ytr), (xte, yte) = train, test
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu)/sd, (xte - mu)/sd
    torch.manual_seed(0)                                   # the head's initial weights: same for every row
    head = linear_head(xtr.shape[1], num_classes)
    train_head_on_features(head, xtr, ytr, settings)
    head.eval()
    with torch.no_grad(): linear = 100*(head(xte).argmax(1) == yte).float().mean().item()
    return linear, retrieval_recall(xte, yte, xtr, ytr, ks=(1,))['R@1']


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('checkpoints', nargs='+', metavar='CHECKPOINT')
    ap.add_argument('--params', default='params.yaml')
    ap.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', help='override a params value')
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params, args.set)
    splits = {s: build_dataset(params, 'retrieval', split=s) for s in ('train', 'test')}
    num_classes = len((params.prepared_dir/'classes.txt').read_text().splitlines())
    settings = params.evaluate.linear
    print(f"{len(splits['train'])} train / {len(splits['test'])} test videos, {num_classes} classes "
          f"(chance {100/num_classes:.1f} %), {params.downstream.retrieval_clips} views per video")
    print(f"{'features':<40} {'stage':<8} {'linear':>7} {'R@1':>7}")
    pixels = features(functools.partial(colour_histogram, mean=params.augment.mean, std=params.augment.std), splits)
    print(f"{'pixels: RGB histogram':<40} {'-':<8} {'%7.1f %7.1f' % read_out(pixels['train'], pixels['test'], num_classes, settings)}")
    for source in args.checkpoints:
        backbone, _ = load_backbone(source, random_spec=backbone_spec(params), seed=params.evaluate.seed, verbose=False)
        backbone.eval()
        data = features(lambda clips: torch.cat(pooled_stages(backbone, clips), dim=1), splits)
        with torch.no_grad(): widths = [t.shape[1] for t in pooled_stages(backbone, splits['train'][0]['clips'][:1])]
        start = 0
        for (stage, _), width in zip(backbone.named_children(), widths):
            part = {s: (x[:, start:start + width], y) for s, (x, y) in data.items()}
            start += width
            print(f"{str(source)[-40:]:<40} {stage:<8} {'%7.1f %7.1f' % read_out(part['train'], part['test'], num_classes, settings)}", flush=True)

if __name__ == '__main__':
    main()
