"""How much class information the pooled features of each backbone stage carry (a diagnostic, not a test).

    python bench/probe_stages.py [--params params.yaml] [--set KEY=VALUE ...] CHECKPOINT [CHECKPOINT ...]

CHECKPOINT is a pre-training checkpoint or `random` (the backbone of params.yaml, randomly initialised with
evaluate.seed). For each, and for each stage of the backbone (stem, layer1 ... layer4), the stage's output is
average-pooled over time and space and over the `downstream.retrieval_clips` un-augmented views of a video
(the retrieval transform), on the train and test manifests of the prepared dataset. Two read-outs per stage:

  linear   test top-1 (%) of a multinomial logistic regression on standardised train features
           (full batch, Adam lr 0.01, 500 steps, L2 1e-3)
  1-NN     test top-1 (%) of the nearest train video by cosine similarity

A pixel baseline comes first: a 4x4x4 RGB histogram of the same views (square-rooted), read out the same way,
which says how much of the class is in the colours alone. The last stage's row is the feature the paper's
protocols use (`fgkv evaluate` trains its own probe on it, with the evaluate section's settings).
"""
import argparse

import torch
import torch.nn.functional as F

from fgkv.config import load_params
from fgkv.datasets import build_dataset
from fgkv.evaluation import load_backbone
from fgkv.protocols import backbone_spec


def colour_histogram(clips, bins=4, mean=0.45, std=0.225):
    "(V, 3, T, H, W) normalised clips -> (bins**3,) square-rooted RGB histogram of all their pixels."
    rgb = (clips*std + mean).clamp(0, 1 - 1e-6).permute(1, 0, 2, 3, 4).reshape(3, -1)
    q = (rgb*bins).long()
    idx = (q[0]*bins + q[1])*bins + q[2]
    return torch.bincount(idx, minlength=bins**3).float().div(idx.numel()).sqrt()


def video_features(dataset, extractors):
    "{name: (N, D)} pooled features per extractor, and the (N,) labels."
    feats, labels = {k: [] for k in extractors}, []
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            for name, fn in extractors.items(): feats[name].append(fn(item['clips']))
            labels.append(item['label'])
    return {k: torch.stack(v) for k, v in feats.items()}, torch.tensor(labels)


def stage_extractors(backbone):
    "One function per top-level stage: clips (V, 3, T, H, W) -> the stage output pooled over V, T, H, W."
    stages = list(backbone.named_children())
    def upto(k):
        def fn(clips):
            x = clips
            for _, module in stages[:k + 1]: x = module(x)
            return x.mean(dim=(0, 2, 3, 4))
        return fn
    return {name: upto(k) for k, (name, _) in enumerate(stages)}


def read_out(train, test, num_classes, steps=500):
    "(linear %, 1-NN %) on test of a probe fitted on train; both are (features, labels)."
    (xtr, ytr), (xte, yte) = train, test
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu)/sd, (xte - mu)/sd
    g = torch.Generator().manual_seed(0)
    w = (0.01*torch.randn(xtr.shape[1], num_classes, generator=g)).requires_grad_()
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(xtr @ w + b, ytr) + 1e-3*w.pow(2).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    linear = ((xte @ w + b).argmax(1) == yte).float().mean().item()
    nearest = ytr[(F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T).argmax(1)]
    return 100*linear, 100*(nearest == yte).float().mean().item()


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
    num_classes = int(max(r.label for r in splits['train'].records)) + 1
    print(f"{len(splits['train'])} train / {len(splits['test'])} test videos, {num_classes} classes "
          f"(chance {100/num_classes:.1f} %), {params.downstream.retrieval_clips} views per video")
    print(f"{'features':<40} {'stage':<8} {'linear':>7} {'1-NN':>7}")
    data = {s: video_features(ds, {'histogram': colour_histogram}) for s, ds in splits.items()}
    pair = [(data[s][0]['histogram'], data[s][1]) for s in ('train', 'test')]
    print(f"{'pixels: RGB histogram':<40} {'-':<8} {'%7.1f %7.1f' % read_out(*pair, num_classes)}")
    for source in args.checkpoints:
        backbone, _ = load_backbone(source, random_spec=backbone_spec(params), seed=params.evaluate.seed, verbose=False)
        backbone.eval()
        extractors = stage_extractors(backbone)
        data = {s: video_features(ds, extractors) for s, ds in splits.items()}
        for stage in extractors:
            pair = [(data[s][0][stage], data[s][1]) for s in ('train', 'test')]
            print(f"{str(source)[-40:]:<40} {stage:<8} {'%7.1f %7.1f' % read_out(*pair, num_classes)}", flush=True)


if __name__ == '__main__':
    main()
