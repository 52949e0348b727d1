"""The learning ladder on in-memory videos, in minutes: does pre-training beat the random floor? (a benchmark, not a test)

    python bench/learning_signal.py [--params params.yaml] [--set SECTION.KEY=VALUE ...] [--methods sup mlp kvmem fgkv ...]
                                    [--steps 400] [--eval-every 100] [--seeds 0 1] [--workers 1] [--json OUT.json]

The data are the embedded dataset's videos (`fgkv.synth`, the `synth` section: `--set synth.per_class=150`), rendered
straight into memory (no encoding, no decoding) and split into train/test videos by group as `fgkv synth` splits them.
With `--encode yuv420p` (or `yuv444p`) each rendered video first makes a round trip through H.264 as `fgkv synth`
writes it (`fgkv.synth.CRF`, `GOP`), with that chroma sampling. With `--data prepared` the data are the study's own
prepared dataset instead (the `prepared` manifests of `dataset`, the encoded videos decoded once into memory by
`FrameSource(cache=True)`), which isolates the input path from everything else.
Everything else is the study's own code and settings: `fgkv.datasets.build_dataset` over an in-memory `FrameSource`
(clip sampling and augmentation of `clips`, `augment`, `downstream`), `fgkv.trainers.build_pretrain_model` with the
variant's overrides of `study.variants` (`model`, `memdpc`), the optimiser, learning-rate schedule and EMA schedule of
`pretrain` (its `epochs` replaced by `--steps`). Per seed and method the ladder is:

  random   the backbone at its random initialisation (the floor; one per architecture: MemDPC's R-2D3D has its own)
  sup      the same backbone trained from scratch with labels for the same number of steps (`fgkv.downstream.train_classifier`
           with the fine-tuning augmentation and `evaluate.finetune` settings; the ceiling)
  VARIANT  each `study.variants` entry named in --methods, pre-trained without labels

Read-outs, on each method's backbone features (pooled, averaged over `downstream.retrieval_clips` uniform centre views):
  knn      weighted 20-NN on L2-normalised features (cosine, temperature 0.07), `fgkv.metrics.knn_classify`
  linear   a linear head on standardised features (`evaluate.linear` epochs/batch, lr 0.1), test top-1
Every method's top-1 is printed with its margin over the random floor of its backbone (same seed) and a 95 % paired-bootstrap
interval over test videos (`fgkv.metrics.paired_bootstrap_ci`); with --eval-every, the margins along training
(the margin-vs-steps curve). Results belong in bench/README.md with the date and the machine.
"""
import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fgkv.config import load_params, Params, to_dict
from fgkv.datasets import FrameSource, VideoRecord, build_dataset, read_manifest
from fgkv.prepare import read_videos_root
from fgkv.checkpoints import random_backbone
from fgkv.downstream import VideoClassifier, linear_head, train_classifier, train_head_on_features
from fgkv.inference import extract_features
from fgkv.metrics import knn_classify, paired_bootstrap_ci
from fgkv.models import cosine_momentum
from fgkv.optim import build_optimizer
from fgkv.protocols import backbone_spec
from fgkv.report import variant_params
from fgkv.synth import CRF, FPS, GOP, dataset_plan, render_clip
from fgkv.trainers import GlobalBatchSampler, build_pretrain_model, learning_rate
from fgkv.video import VideoInfo, read_frames, write_video


def render_encoded(pix_fmt:str|None, *job) -> np.ndarray:
    "One rendered video, through an H.264 round trip with chroma sampling `pix_fmt` unless that is None."
    frames = render_clip(*job)
    if pix_fmt is None: return frames
    with tempfile.TemporaryDirectory() as d:
        path = write_video(Path(d)/'v.mp4', frames, fps=FPS, crf=CRF, gop=GOP, pix_fmt=pix_fmt)
        return read_frames(path, range(len(frames))).numpy()


def render_split(params:Params, workers:int=1, pix_fmt:str|None=None) -> dict[str, tuple[list[VideoRecord], list[np.ndarray]]]:
    "The synth section's videos, rendered into memory (`pix_fmt`: through H.264): {'train': (records, frames), 'test': ...}."
    s = params.synth[params.dataset]
    plan = dataset_plan(s.classes, s.per_class)
    jobs = [(pix_fmt, s.seed, e['cls'], e['group'], e['clip'], s.frames, s.size, s.scenes, s.class_look, s.object_scale, s.background_contrast,
             s.distractors) for e in plan]
    if workers > 1:
        import multiprocessing
        with multiprocessing.get_context('fork').Pool(workers) as pool: frames = pool.starmap(render_encoded, jobs, chunksize=8)
    else: frames = [render_encoded(*j) for j in jobs]
    out = {'train': ([], []), 'test': ([], [])}
    for e, f in zip(plan, frames):
        out[e['split']][0].append(VideoRecord(Path(e['path']), e['label'] - 1, VideoInfo(s.frames, 25.0, s.size, s.size, 0)))
        out[e['split']][1].append(f)
    return out


def decode_prepared(params:Params) -> dict[str, FrameSource]:
    "The study's prepared train/test manifests, every video decoded once into memory."
    prepared = params.prepared_dir
    if not (prepared/'train.csv').exists(): raise SystemExit(f'--data prepared: {prepared}/train.csv is missing; run `dvc repro prepare` first')
    root = read_videos_root(prepared)
    return {split: FrameSource(read_manifest(prepared/f'{split}.csv', root), params.decode.backend, params.decode.threads, cache=True)
            for split in ('train', 'test')}


def features(backbone, params:Params, source:FrameSource, workers:int) -> tuple[torch.Tensor, torch.Tensor]:
    "Pooled backbone features (averaged over the retrieval views) and labels of every video of `source`."
    ds = build_dataset(params, 'retrieval', source=source)
    return extract_features(backbone, ds, batch_size=32, workers=workers, device='cpu')


def read_out(backbone, params:Params, data:dict, workers:int, seed:int) -> dict[str, torch.Tensor]:
    "Per-test-video correctness (0/1) of the k-NN and the linear read-outs."
    xtr, ytr = features(backbone, params, data['train'], workers)
    xte, yte = features(backbone, params, data['test'], workers)
    num_classes = int(ytr.max()) + 1
    knn = knn_classify(xtr, ytr, xte, num_classes, k=20, temperature=0.07).argmax(1) == yte
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    s = dataclasses.replace(params.evaluate.linear, lr=0.1, warmup_epochs=0.0, dropout=0.0)
    head = linear_head(xtr.shape[1], num_classes)
    torch.manual_seed(seed)
    train_head_on_features(head, (xtr - mean) / std, ytr, s, seed=seed)
    with torch.no_grad(): linear = head.eval()((xte - mean) / std).argmax(1) == yte
    return {'knn': 100 * knn.float(), 'linear': 100 * linear.float()}   # per video, in % (the mean is top-1)


def pretrain(params:Params, data:dict, steps:int, seed:int, workers:int, eval_every:int, evaluate):
    "Pre-train the model of `params` for `steps` steps; calls `evaluate(backbone, step)` every `eval_every` steps and at the end."
    cfg = params.pretrain
    torch.manual_seed(seed)
    learner, spec = build_pretrain_model(params)
    mode = 'blocks' if params.model.kind == 'memdpc' else 'pretrain'
    ds = build_dataset(params, mode, source=data['train'], seed=seed)
    steps_per_epoch = len(ds) // cfg.batch_size
    epochs = math.ceil(steps / steps_per_epoch)
    cfg = dataclasses.replace(cfg, epochs=epochs)
    total = epochs * steps_per_epoch
    opt = build_optimizer(cfg.optimizer, learner, lr=cfg.lr, weight_decay=spec.weight_decay, nesterov=params.model.nesterov)
    sampler = GlobalBatchSampler(len(ds), cfg.batch_size, seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers)
    backbone = learner.backbone
    step, losses = 0, []
    for epoch in range(epochs):
        sampler.set_epoch(epoch); ds.set_epoch(epoch)
        for batch in loader:
            if step == steps: break
            for g in opt.param_groups: g['lr'] = learning_rate(cfg, step, total, steps_per_epoch)
            out = learner(batch['clips'])
            opt.zero_grad(set_to_none=True); out['loss'].backward(); opt.step()
            if spec.kind == 'byol': learner.update_target(cosine_momentum((step + 1) / total, cfg.ema_base))
            step += 1
            losses.append(out['loss'].item())
            if eval_every and step % eval_every == 0 and step < steps: evaluate(backbone, step)
    evaluate(backbone, step)
    return float(np.mean(losses[-20:]))


def supervise(params:Params, data:dict, steps:int, seed:int, workers:int, evaluate):
    "The backbone trained from scratch with labels for about `steps` steps (the fine-tuning protocol from random init)."
    torch.manual_seed(seed)
    backbone = random_backbone(backbone_spec(params), seed=seed)[0]
    ds = build_dataset(params, 'train', source=data['train'], seed=seed)
    s = params.evaluate.finetune
    epochs = max(1, round(steps / (len(ds) // s.batch_size)))
    s = dataclasses.replace(s, epochs=epochs, warmup_epochs=min(s.warmup_epochs, epochs), precise_bn_batches=0)
    num_classes = max(r.label for r in data['train'].records) + 1
    model = VideoClassifier(backbone, linear_head(backbone.feat_dim, num_classes, s.dropout))
    stats = train_classifier(model, ds, num_classes, s, seed=seed, workers=workers, device='cpu')
    evaluate(backbone, epochs * (len(ds) // s.batch_size))
    return stats['train_loss']


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--params', type=Path, default=Path('params.yaml'))
    ap.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE')
    ap.add_argument('--methods', nargs='+', default=['sup', 'mlp', 'kvmem', 'fgkv'], help="'sup' and study.variants names")
    ap.add_argument('--steps', type=int, default=400)
    ap.add_argument('--eval-every', type=int, default=0)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    ap.add_argument('--workers', type=int, default=1, help='data-loader workers (the machine has 2 cores)')
    ap.add_argument('--data', choices=['rendered', 'prepared'], default='rendered',
                    help="rendered: the synth section's videos rendered into memory; prepared: the study's decoded dataset")
    ap.add_argument('--encode', choices=['yuv420p', 'yuv444p'], help='rendered data: pass every video through H.264 with this chroma sampling')
    ap.add_argument('--json', type=Path, help='also write every number here')
    args = ap.parse_args(argv)
    params = load_params(args.params, args.set)
    unknown = [m for m in args.methods if m != 'sup' and m not in params.study.variants]
    if unknown: raise SystemExit(f'--methods: {unknown} are neither sup nor study.variants ({", ".join(params.study.variants)})')
    t0 = time.time()
    if args.encode and args.data != 'rendered': raise SystemExit('--encode applies to --data rendered only')
    if args.data == 'rendered': data = {k: FrameSource.from_frames(*v) for k, v in render_split(params, 2, args.encode).items()}
    else: data = decode_prepared(params)
    n_train, n_test = (len(data[k].records) for k in ('train', 'test'))
    what = f'{params.synth[params.dataset]}, H.264 {args.encode or "none"}' if args.data == 'rendered' else params.prepared_dir
    print(f'data ({args.data}): {what} -> {n_train} train / {n_test} test videos, in {time.time() - t0:.0f} s', flush=True)
    results = []   # dicts: seed, method, step, readout, top1, correct (list)

    for seed in args.seeds:
        floors = {}   # backbone spec -> (row name, read-outs): each method is compared with its own architecture at random init
        def floor_of(p, seed=seed):
            spec = backbone_spec(p)
            key = json.dumps(spec, sort_keys=True)
            if key not in floors:
                name = 'random' if spec == backbone_spec(params) else f'random {spec["name"]}'
                floors[key] = name, read_out(random_backbone(spec, seed=seed)[0], p, data, args.workers, seed)
                results.extend(dict(seed=seed, method=name, step=0, readout=r, correct=c, floor=name) for r, c in floors[key][1].items())
            return floors[key]
        floor_of(params)
        for method in args.methods:
            t = time.time()
            p = params if method == 'sup' else variant_params(params, method)
            floor_name, floor = floor_of(p)
            def evaluate(backbone, step, method=method, p=p):
                for r, c in read_out(backbone, p, data, args.workers, seed).items():
                    results.append(dict(seed=seed, method=method, step=step, readout=r, correct=c, floor=floor_name))
                    ci = paired_bootstrap_ci(c, floor[r], seed=seed)
                    print(f'  seed {seed} {method:>7} step {step:5d} {r:>6}: {c.mean():5.1f} %  '
                          f'margin {ci.estimate:+5.1f} [{ci.low:+5.1f}, {ci.high:+5.1f}]', flush=True)
            if method == 'sup': loss = supervise(p, data, args.steps, seed, args.workers, evaluate)
            else: loss = pretrain(p, data, args.steps, seed, args.workers, args.eval_every, evaluate)
            print(f'seed {seed} {method}: final loss {loss:.4f}, {time.time() - t:.0f} s', flush=True)

    print(f'\nthe ladder ({n_test} test videos; top-1 %, margin over the random floor with its 95 % paired-bootstrap interval)')
    print(f'{"method":>16} {"seed":>4} {"step":>5} {"k-NN":>6} {"margin [95 % CI]":>24} {"linear":>7} {"margin [95 % CI]":>24}')
    final = {}   # (seed, method) -> {readout: the last read-out's row}
    for r in results: final.setdefault((r['seed'], r['method']), {})[r['readout']] = r
    for (seed, method), rows in sorted(final.items(), key=lambda kv: (not kv[0][1].startswith('random'), kv[0][1], kv[0][0])):
        cells = []
        for readout in ('knn', 'linear'):
            ci = paired_bootstrap_ci(rows[readout]['correct'], final[seed, rows[readout]['floor']][readout]['correct'], seed=seed)
            cells.append(f'{rows[readout]["correct"].mean():6.1f} {ci.estimate:+7.1f} [{ci.low:+6.1f}, {ci.high:+6.1f}]')
        print(f'{method:>16} {seed:>4} {rows["knn"]["step"]:>5} {cells[0]:>31} {cells[1]:>32}')
    print(f'total {time.time() - t0:.0f} s')
    if args.json:
        rows = [{**{k: v for k, v in r.items() if k != 'correct'}, 'top1': float(r['correct'].mean()),
                 'correct': (r['correct'] > 0).int().tolist()} for r in results]
        args.json.write_text(json.dumps(dict(params=to_dict(params), args={k: str(v) for k, v in vars(args).items()}, rows=rows)))



if __name__ == '__main__': main()
