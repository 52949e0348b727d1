"""Seconds, FLOPs and GFLOP/s of one FGKVMemPred pre-training step per backbone (a benchmark, not a test).

    python bench/train_step.py [--batch 2] [--steps 2] [--threads N] [--only NAME ...] [--json FILE]

Rows: the embedded default config of params.yaml (its clips, model and pretrain.batch_size), then every
FGKVMemPred backbone at the paper's input size with the full FGKV head (the preset's N = K = 4096): R3D-18, R3D-18-official
and R(2+1)D-18 on 16x112x112 clips, Slow-R18 on 8x224x224 clips, two clips per video (rho = 2), at a small
batch (`--batch`, the paper uses 64). A step is what `fgkv.trainers.Pretrainer` does: forward, one backward,
a LARS step and the EMA update of the target. Random clips, fp32, CPU.

Columns
  s/step      best (minimum) wall time of `--steps` timed steps, after a warm-up step (the FLOP-counted one);
              the minimum because the machine may be shared (`median` is printed beside it, all times are in --json)
  clips/s     B * rho / (s/step): every clip of every video counts
  GFLOP/step  torch.utils.flop_counter.FlopCounterMode over one whole step (forward, backward, target forward)
  GFLOP/s     GFLOP/step / (s/step)
  conv peak   the machine's fp32 throughput on this step's own convolutions: every Conv3d input shape of the
              step (recorded by forward hooks) is run alone through F.conv3d (forward only, no grad) and timed
              (best of >= 2 runs and >= 0.3 s); peak = sum(count * FLOPs) / sum(count * seconds) over the shapes
  % peak      GFLOP/s / conv peak
  load        1-minute load average when the row finished (2 cores: above 2 means other jobs compete)
  memory %, concepts %   share of a profiled step's wall time spent in the KV-memory predictor and in the
              concept-alignment module (with its losses): torch.profiler CPU time of the record_function
              regions that forward hooks open around `learner.predictor` / `learner.concepts`, plus the CPU time of
              the backward nodes those regions created (matched by autograd sequence number); of
              `--profile-steps` profiled steps the one with the least wall time is used (the least disturbed);
              `heads s` is the absolute time (the heads' work does not depend on the backbone or clip size)
  authors s/step  the same step done the official code's way (the authors' `slowfast/models/contrastive.py`, `memory_recon.py`):
              for each clip k its own online forward and its own backward; the target forward run clip by
              clip, and the target carrying its own copy of the memory and concept modules, run on the target
              projection (cloned as the fake "target") and randn maps of the last-stage shape; the EMA
              also covers those copies. Ours: all clips in one online forward, one backward, target =
              backbone + projector. Ours and the authors' steps are timed alternately.
  speed-up    authors s/step / ours s/step (both best of `--steps`)
"""
import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from fgkv.config import MODEL_PRESETS, load_params
from fgkv.losses import prediction_loss
from fgkv.models import build_learner
from fgkv.optim import build_optimizer
from fgkv.trainers import build_pretrain_model

PAPER_INPUTS = {'r3d18': (16, 112), 'r3d18_official': (16, 112), 'r2plus1d18': (16, 112), 'slow_r18': (8, 224)}
ROWS = ('default', *PAPER_INPUTS)
LR, EMA = 1e-3, 0.996          # any values do for timing; the warm-up lr keeps the weights sane
HEADS = {'predictor': 'head::memory', 'concepts': 'head::concepts'}


# ---------------------------------------------------------------- building the rows
def build_row(name, args):
    "(learner, backbone name, weight decay, batch, rho, frames, crop) for row `name`."
    if name == 'default':
        params = load_params(args.params)
        if params.model.kind != 'byol':
            raise SystemExit(f"{args.params}: model.kind is {params.model.kind!r}; this benchmark times the BYOL-family step only")
        learner, spec = build_pretrain_model(params)
        c = params.clips
        return learner, spec.backbone['name'], spec.weight_decay, params.pretrain.batch_size, c.num_clips, c.frames, c.crop_size
    config = dataclasses.replace(MODEL_PRESETS[args.preset], backbone=name)
    frames, crop = PAPER_INPUTS[name]
    return build_learner(config), name, config.weight_decay, args.batch, 2, frames, crop


# ---------------------------------------------------------------- the two steps
def our_step(learner, opt, clips):
    "One step as fgkv.trainers does it: one batched forward, one backward, LARS, EMA of backbone + projector."
    out = learner(clips)
    opt.zero_grad(set_to_none=True)
    out['loss'].backward()
    opt.step()
    learner.update_target(EMA)


class AuthorsStep:
    "The official code's step on the same learner: per-clip forward/backward; the target carries its own head copy."
    def __init__(self, learner):
        self.learner = learner
        self.predictor = copy.deepcopy(learner.predictor).requires_grad_(False)
        self.concepts = None if learner.concepts is None else copy.deepcopy(learner.concepts).requires_grad_(False)
        heads = [m for m in (learner.predictor, learner.concepts) if m is not None]
        copies = [m for m in (self.predictor, self.concepts) if m is not None]
        self.head_pairs = [(t, o) for tm, om in zip(copies, heads) for t, o in zip(tm.parameters(), om.parameters())]

    @torch.no_grad()
    def _target(self, clip):
        "Target forward of one clip, then its memory/concept copy on fake inputs (as the authors' `memory_recon.py` does): (y, z)."
        tgt = self.learner.target
        maps = tgt.backbone(clip)                                           # (B, C, T', H', W')
        y = maps.flatten(2).mean(-1)                                        # (B, C)
        z = tgt.projector(y)                                                # (B, d_proj)
        self.predictor(z)
        if self.concepts is not None:
            fake = lambda: torch.randn_like(maps).flatten(2).mean(-1)       # GAP of randn maps
            self.concepts(z, z.clone(), fake(), fake())
        return y, z

    def __call__(self, opt, clips):
        l = self.learner
        R = clips.shape[1]
        views = [clips[:, k].contiguous() for k in range(R)]               # the official loader yields one tensor per clip
        targets = [self._target(v) for v in views]                          # batched_inference=False: clip by clip
        opt.zero_grad(set_to_none=True)
        for k in range(R):                                                  # CONTRASTIVE.SEQUENTIAL: backward per clip
            y, z = l.encode(views[k])
            pred = l.predictor(z)
            pred = pred[0] if isinstance(pred, tuple) else pred
            loss = 0.
            for j in range(R):
                if j == k: continue
                y_t, z_t = targets[j]
                loss = loss + prediction_loss(pred, z_t, l.pred_scale)
                if l.concepts is not None:
                    o = l.concepts(z, z_t, y, y_t)
                    loss = loss + l.alpha * (o['recon_src'] + o['recon_tgt']) + l.beta * o['align']
            loss.backward()
        opt.step()
        l.update_target(EMA)
        with torch.no_grad():                                               # the EMA covers every named parameter
            for t, o in self.head_pairs: t.lerp_(o.detach(), 1 - EMA)


# ---------------------------------------------------------------- measurements
def timed(fn):
    "Wall seconds of one call of `fn`."
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def count_flops(fn):
    "FLOPs of one call of `fn` (FlopCounterMode: matmuls and convolutions, forward and backward)."
    with FlopCounterMode(display=False) as counter: fn()
    return counter.get_total_flops()


def record_conv_shapes(model):
    "Forward hooks on every Conv3d that count (input shape, conv config); returns (Counter, remove)."
    shapes = Counter()
    def hook(m, args, out):
        shapes[(tuple(args[0].shape), tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups)] += 1
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    return shapes, lambda: [h.remove() for h in handles]


@torch.no_grad()
def conv_peak(shapes, min_time=0.3, min_reps=2):
    "Attainable fp32 GFLOP/s on `shapes`: each conv timed alone, sum(count*FLOPs) / sum(count*seconds)."
    flops = secs = 0.
    for (x_shape, w_shape, stride, padding, dilation, groups), count in shapes.items():
        x, w = torch.randn(x_shape), torch.randn(w_shape)
        run = lambda: F.conv3d(x, w, None, stride, padding, dilation, groups)
        f = count_flops(run)                                                # also the warm-up
        times, start = [], time.perf_counter()
        while len(times) < min_reps or time.perf_counter() - start < min_time: times.append(timed(run))
        flops += count * f
        secs += count * min(times)
    return flops / secs / 1e9


def open_head_regions(learner):
    "Forward pre/post hooks that wrap the predictor and concept module in profiler regions; returns remove()."
    handles = []
    for attr, label in HEADS.items():
        mod = getattr(learner, attr, None)
        if mod is None: continue
        stack = []
        def pre(m, args, label=label, stack=stack):
            stack.append(record_function(label)); stack[-1].__enter__()
        def post(m, args, out, stack=stack):
            stack.pop().__exit__(None, None, None)
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return lambda: [h.remove() for h in handles]


def head_times(events):
    "CPU microseconds per head label: its forward regions plus the backward nodes their ops created."
    total, owner_of_seq = Counter(), {}
    forward = []                                                            # (start, seq, head label or None)
    def walk(e, label):
        label = e.name if e.name in HEADS.values() else label
        if e.sequence_nr >= 0: forward.append((e.time_range.start, e.sequence_nr, label))
        for c in e.cpu_children: walk(c, label)
    for e in events:
        if e.cpu_parent is not None: continue
        if e.name in HEADS.values(): total[e.name] += e.cpu_time_total
        if not e.name.startswith('autograd::engine'): walk(e, None)
    # the op that creates an autograd node is the last one to peek its sequence number
    for _, seq, label in sorted(forward, key=lambda t: t[0]): owner_of_seq[seq] = label
    for e in events:
        if e.cpu_parent is None and e.name.startswith('autograd::engine::evaluate_function'):
            label = owner_of_seq.get(e.sequence_nr)
            if label is not None: total[label] += e.cpu_time_total
    return total


def head_shares(learner, opt, clips, steps):
    "Seconds in the memory and concept heads (forward + backward) of the least disturbed profiled step, and its wall time."
    best = None
    remove = open_head_regions(learner)
    try:
        for _ in range(steps):
            with profile(activities=[ProfilerActivity.CPU]) as prof: wall = timed(lambda: our_step(learner, opt, clips))
            if best is None or wall < best[0]: best = (wall, head_times(prof.events()))
    finally: remove()
    wall, t = best
    return {k: t[label] / 1e6 for k, label in HEADS.items()}, wall


def bench_row(name, args):
    torch.manual_seed(0)
    learner, backbone, wd, B, R, T, S = build_row(name, args)
    learner.train()
    opt = build_optimizer('lars', learner, lr=LR, weight_decay=wd)
    authors = AuthorsStep(learner)
    clips = torch.randn(B, R, 3, T, S, S)
    ours_fn, authors_fn = (lambda: our_step(learner, opt, clips)), (lambda: authors(opt, clips))

    shapes, remove = record_conv_shapes(learner)
    flops = count_flops(ours_fn)                                            # warm-up 1
    remove()
    authors_flops = count_flops(authors_fn)                                 # authors' warm-up 1
    for _ in range(args.warmup - 1): ours_fn(); authors_fn()
    ours_t, authors_t = [], []
    for _ in range(args.steps):                                             # alternate: same load for both
        ours_t.append(timed(ours_fn)); authors_t.append(timed(authors_fn))
    head_s, prof_wall = head_shares(learner, opt, clips, args.profile_steps)
    peak = conv_peak(shapes)
    s, sa = min(ours_t), min(authors_t)
    keys = getattr(learner.predictor, 'keys', None)
    return dict(row=name, backbone=backbone, input=f'{R}x{T}x{S}x{S}', batch=B, rho=R, frames=T, crop=S,
                predictor=learner.kind, num_slots=None if keys is None else keys.shape[0],
                num_concepts=None if learner.concepts is None else learner.concepts.center.shape[1],
                s_per_step=s, median_s=statistics.median(ours_t), step_times=ours_t, clips_per_s=B * R / s,
                gflop_per_step=flops / 1e9, gflops=flops / 1e9 / s, conv_peak_gflops=peak, conv_shapes=len(shapes),
                frac_peak=flops / 1e9 / s / peak, memory_s=head_s['predictor'], concepts_s=head_s['concepts'],
                profiled_step_s=prof_wall, memory_share=head_s['predictor'] / prof_wall,
                concepts_share=head_s['concepts'] / prof_wall, heads_share=sum(head_s.values()) / prof_wall, heads_s=sum(head_s.values()),
                authors_s_per_step=sa,
                authors_median_s=statistics.median(authors_t), authors_step_times=authors_t,
                authors_gflop_per_step=authors_flops / 1e9, speedup=sa / s, load=os.getloadavg()[0])


# ---------------------------------------------------------------- printing
COLS1 = [('row', 'row', -15, ''), ('input', 'rho x T x S^2', 14, ''), ('batch', 'B', 3, 'd'),
         ('s_per_step', 's/step', 8, '.3f'), ('median_s', 'median', 8, '.3f'), ('clips_per_s', 'clips/s', 8, '.2f'),
         ('gflop_per_step', 'GFLOP/step', 10, '.1f'), ('gflops', 'GFLOP/s', 8, '.1f'),
         ('conv_peak_gflops', 'conv peak', 9, '.1f'), ('frac_peak', '% peak', 7, '.1%'), ('load', 'load', 5, '.1f')]
COLS2 = [('row', 'row', -15, ''), ('memory_share', 'memory %', 9, '.1%'), ('concepts_share', 'concepts %', 10, '.1%'),
         ('heads_share', 'heads %', 8, '.1%'), ('heads_s', 'heads s', 8, '.3f'), ('s_per_step', 'ours s/step', 11, '.3f'),
         ('authors_s_per_step', 'authors s/step', 14, '.3f'), ('authors_gflop_per_step', 'authors GFLOP', 13, '.1f'),
         ('speedup', 'speed-up', 8, '.2f')]


def table(rows, cols):
    "Fixed-width text table; a negative width left-aligns."
    cell = lambda v, w, spec: f"{format(v, spec):{'<' if w < 0 else '>'}{abs(w)}}"
    head = ' '.join(cell(title, w, '') for _, title, w, _ in cols)
    lines = [head, '-' * len(head)] + [' '.join(cell(r[k], w, spec) for k, _, w, spec in cols) for r in rows]
    return '\n'.join(lines)


def load_average():
    try: return os.getloadavg()
    except OSError: return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n'.join(__doc__.splitlines()[2:]))
    ap.add_argument('--batch', type=int, default=2, help='videos per step for the paper-size rows (the paper: 64)')
    ap.add_argument('--steps', type=int, default=2, help='timed steps per row and way')
    ap.add_argument('--warmup', type=int, default=1, help='warm-up steps per row and way (the first is FLOP-counted)')
    ap.add_argument('--threads', type=int, default=len(os.sched_getaffinity(0)), help='torch intra-op threads')
    ap.add_argument('--only', action='append', choices=ROWS, help='run only this row (repeatable)')
    ap.add_argument('--preset', default='official', choices=('official', 'paper'), help='model preset of the paper-size rows')
    ap.add_argument('--params', default='params.yaml', help='params file of the default row')
    ap.add_argument('--profile-steps', type=int, default=2,
                    help='profiled steps per row for the head shares (the least disturbed one is used)')
    ap.add_argument('--json', help='also write the numbers to this file')
    args = ap.parse_args()
    if args.batch < 2: ap.error('--batch must be >= 2 (BatchNorm1d of the heads needs two samples per view)')
    if min(args.steps, args.warmup, args.profile_steps, args.threads) < 1:
        ap.error('--steps, --warmup, --profile-steps and --threads must be >= 1')
    torch.set_num_threads(args.threads)
    names = [n for n in ROWS if not args.only or n in args.only]
    load0 = load_average()
    print(f'torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads; '
          f'load average at start {load0}')
    if load0 and load0[0] > 1:
        print(f'warning: load average {load0[0]:.1f} on {os.cpu_count()} cores: other jobs compete for the CPU; '
              f'multi-threaded steps then slow down far more than single-threaded ones (compare --threads 1)')
    print(f'paper-size rows: preset {args.preset!r}, N = {MODEL_PRESETS[args.preset].num_slots}, K = {MODEL_PRESETS[args.preset].num_concepts}, batch {args.batch}; '
          f'{args.warmup} warm-up + {args.steps} timed steps per way, {args.profile_steps} profiled')
    rows = []
    for name in names:
        start = time.perf_counter()
        rows.append(bench_row(name, args))
        print(f'  {name}: done in {time.perf_counter() - start:.0f} s', flush=True)
    load1 = load_average()
    print()
    print(table(rows, COLS1))
    print()
    print(table(rows, COLS2))
    print(f'\nload average at end {load1} (the machine may be shared: timings move with the load)')
    if args.json:
        meta = dict(torch=torch.__version__, threads=args.threads, preset=args.preset, batch=args.batch,
                    steps=args.steps, warmup=args.warmup, profile_steps=args.profile_steps, load_start=load0,
                    load_end=load1, cpu_count=os.cpu_count())
        with open(args.json, 'w') as f: json.dump(dict(meta=meta, rows=rows), f, indent=1)
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
