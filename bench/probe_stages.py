"""How much class information the pooled features of each backbone stage carry (a diagnostic, not a test).

    python bench/probe_stages.py [--params params.yaml] [--set KEY=VALUE ...] CHECKPOINT [CHECKPOINT ...]

CHECKPOINT is a pre-training checkpoint or `random` (the backbone of params.yaml, randomly initialised with
evaluate.seed). For each, and for each stage of the backbone (stem, layer1 ... layer4), the stage's output is
average-pooled over time and space and over the `downstream.retrieval_clips` un-augmented views of a video
(the retrieval transform), on the train and test manifests of the prepared dataset. Two read-outs per stage:

  linear   test top-1 (%) of the linear probe's head (`evaluate.linear` settings, as `fgkv evaluate` trains it
           on cached features) on features standardised with the train statistics, so stages of any scale
           read out alike
  1-NN     R@1 (%): test videos searching the train videos by cosine similarity

A pixel baseline comes first: a 4x4x4 RGB histogram of the same views (square-rooted), read out the same way,
which says how much of the class is in the colours alone. The last stage's row is the feature the paper's
protocols use.
"""
import argparse
import functools

import torch

from fgkv.config import load_params
from fgkv.datasets import build_dataset
from fgkv.evaluation import linear_head, load_backbone, map_videos, train_head_on_features
from fgkv.metrics import retrieval_recall
from fgkv.protocols import backbone_spec, protocol_settings


def colour_histogram(clips, mean, std, bins=4):
    "(N, 3, T, H, W) clips normalised with per-channel `mean`, `std` -> (N, bins**3) square-rooted RGB histograms."
    mean, std = (torch.tensor(v, dtype=clips.dtype).view(1, 3, 1, 1, 1) for v in (mean, std))
    q = ((clips*std + mean).clamp(0, 1 - 1e-6)*bins).long()
    idx = ((q[:, 0]*bins + q[:, 1])*bins + q[:, 2]).flatten(1)
    counts = torch.zeros(len(idx), bins**3).scatter_add_(1, idx, torch.ones(idx.shape))
    return (counts/idx.shape[1]).sqrt()


def stage_features(backbone):
    "One function per top-level stage: clips (N, 3, T, H, W) -> that stage's output pooled over T, H, W."
    stages = [module for _, module in backbone.named_children()]
    def upto(k):
        def fn(clips):
            for module in stages[:k + 1]: clips = module(clips)
            return clips.mean(dim=(2, 3, 4))
        return fn
    return {name: upto(k) for k, (name, _) in enumerate(backbone.named_children())}


def read_out(fn, splits, num_classes, settings):
    "(linear %, R@1 %) of the pooled features `fn` gives the train and test videos."
    with torch.no_grad(): (xtr, ytr), (xte, yte) = (map_videos(fn, splits[s], device='cpu') for s in ('train', 'test'))
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
    num_classes = max(r.label for r in splits['train'].records) + 1
    settings = protocol_settings(params, 'linear')
    print(f"{len(splits['train'])} train / {len(splits['test'])} test videos, {num_classes} classes "
          f"(chance {100/num_classes:.1f} %), {params.downstream.retrieval_clips} views per video")
    pixels = functools.partial(colour_histogram, mean=params.augment.mean, std=params.augment.std)
    print(f"{'features':<40} {'stage':<8} {'linear':>7} {'R@1':>7}")
    print(f"{'pixels: RGB histogram':<40} {'-':<8} {'%7.1f %7.1f' % read_out(pixels, splits, num_classes, settings)}")
    for source in args.checkpoints:
        backbone, _ = load_backbone(source, random_spec=backbone_spec(params), seed=params.evaluate.seed, verbose=False)
        backbone.eval()
        for stage, fn in stage_features(backbone).items():
            print(f"{str(source)[-40:]:<40} {stage:<8} {'%7.1f %7.1f' % read_out(fn, splits, num_classes, settings)}", flush=True)


if __name__ == '__main__':
    main()
