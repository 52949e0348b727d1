"""Where a pre-training stage's time goes: the whole stage's clips/s against the compute-only step (a benchmark, not a test).

    python bench/stage_throughput.py [--params params.yaml] [--variant fgkv] [--set SECTION.KEY=VALUE ...]
                                     [--steps 20] [--json OUT.json]

Measured in one run, on the prepared dataset (`dvc repro prepare` first), for one BYOL-family variant of
`study.variants`:

  compute-only   the stage's own step (`build_pretrain_model`, the `pretrain` optimiser, forward, backward, optimiser
                 step, EMA update) on random clips of the stage's batch shape, already in memory: best and median of
                 `--steps` timed steps after two warm-up steps
  conv peak      the machine's fp32 throughput on that step's own Conv3d shapes (`train_step.py`'s definition)
  stage          the DVC stage's command itself (`papermill nbs/study/02_pretrain.ipynb` with the variant, which
                 launches `fgkv pretrain` in its own process), timed from start to end: kernel and process start-up,
                 dataset decoding, loader, training, checkpoints, logs, figures; clips/s = steps * batch * rho / seconds
  loop           the trainer's own clips/s over its training loop (its `throughput.tsv`, averaged over the run)

Ratios printed: stage / compute-only (how much of the stage is spent learning), loop / compute-only (what the
loader and logging cost inside the loop), step / conv peak (how well the step uses the convolutions' attainable
speed). The stage writes into a temporary folder; nothing of the working tree changes. Results belong in
bench/README.md with the date and the machine.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train_step import conv_peak, count_flops, record_conv_shapes, timed  # noqa: E402  (the same peak definition)

from fgkv.config import load_params, to_dict  # noqa: E402
from fgkv.models import cosine_momentum  # noqa: E402
from fgkv.optim import build_optimizer  # noqa: E402
from fgkv.study import run_overrides  # noqa: E402
from fgkv.trainers import build_pretrain_model  # noqa: E402


def compute_only(params, steps:int) -> dict:
    "Seconds per step of the stage's step on random in-memory clips, its FLOPs and the conv peak of its shapes."
    cfg, c = params.pretrain, params.clips
    torch.manual_seed(0)
    learner, spec = build_pretrain_model(params)
    learner.train()
    if cfg.channels_last: learner.to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(cfg.optimizer, learner, lr=cfg.lr, weight_decay=spec.weight_decay, nesterov=params.model.nesterov)
    clips = torch.randn(cfg.batch_size, c.num_clips, 3, c.frames, c.crop_size, c.crop_size)
    def step():
        out = learner(clips)
        opt.zero_grad(set_to_none=True); out['loss'].backward(); opt.step()
        learner.update_target(cosine_momentum(0.5, cfg.ema_base))
    shapes, remove = record_conv_shapes(learner)
    flops = count_flops(step)                                                # warm-up 1, FLOP-counted
    remove()
    step()                                                                   # warm-up 2
    times = [timed(step) for _ in range(steps)]
    s = min(times)
    return dict(s_per_step=s, median_s=statistics.median(times), clips_per_s=cfg.batch_size * c.num_clips / s,
                gflops=flops / 1e9 / s, conv_peak_gflops=conv_peak(shapes), step_times=times)


def stage(params_file:Path, variant:str, workdir:Path) -> float:
    "Wall seconds of the variant's pre-training stage command, run into `workdir`."
    cmd = [sys.executable, '-m', 'papermill', '-k', 'python3', '--log-level', 'WARNING', 'nbs/study/02_pretrain.ipynb',
           str(workdir/'pretrain.ipynb'), '-p', 'params_file', str(params_file), '-p', 'variant', variant,
           '-p', 'models', str(workdir/'models'), '-p', 'reports', str(workdir/'reports')]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def loop_rate(run:Path) -> float:
    "The trainer's average clips/s over its logged intervals (throughput.tsv)."
    rates = [float(r['clips_per_s']) for r in csv.DictReader(open(run/'throughput.tsv'), delimiter='\t')]
    return statistics.mean(rates)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--params', type=Path, default=Path('params.yaml'))
    ap.add_argument('--variant', default='fgkv', help='a BYOL-family key of study.variants')
    ap.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE', help='override a params value for both measurements')
    ap.add_argument('--steps', type=int, default=20, help='timed compute-only steps')
    ap.add_argument('--json', type=Path, help='also write every number here')
    args = ap.parse_args(argv)
    base = load_params(args.params, args.set)
    if args.variant not in base.study.variants: raise SystemExit(f'--variant {args.variant!r} is not a key of study.variants in {args.params}')
    overrides = [*run_overrides(base, variant=args.variant), *args.set]
    params = load_params(args.params, overrides)
    if params.model.kind != 'byol': raise SystemExit(f'--variant {args.variant}: model.kind is {params.model.kind!r}; this benchmark times the BYOL-family step')
    cfg, c = params.pretrain, params.clips
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; variant {args.variant} {overrides}')
    with tempfile.TemporaryDirectory(prefix='stage-throughput-') as tmp:
        tmp = Path(tmp)
        params_file = tmp/'params.yaml'
        if args.set: params_file.write_text(yaml.safe_dump(to_dict(base), sort_keys=False))  # the stage reads a file
        else: params_file.write_bytes(args.params.read_bytes())
        seconds = stage(params_file, args.variant, tmp)
        run = tmp/'models'/args.variant
        loop = loop_rate(run)
    videos = len(list(csv.DictReader(open(params.prepared_dir/'train.csv'))))
    steps = cfg.epochs * (videos // cfg.batch_size)
    clips = steps * cfg.batch_size * c.num_clips
    comp = compute_only(params, args.steps)
    stage_rate = clips / seconds
    rows = dict(stage_s=seconds, stage_steps=steps, stage_clips_per_s=stage_rate, loop_clips_per_s=loop, **comp,
                stage_over_compute=stage_rate / comp['clips_per_s'], loop_over_compute=loop / comp['clips_per_s'],
                step_over_peak=comp['gflops'] / comp['conv_peak_gflops'], load_end=os.getloadavg()[0])
    print(f'stage            {seconds:7.1f} s for {steps} steps of {cfg.batch_size} x {c.num_clips} clips: {stage_rate:7.1f} clips/s')
    print(f'loop             {loop:7.1f} clips/s (the trainer\'s throughput.tsv)')
    print(f'compute-only     {comp["s_per_step"]:7.3f} s/step (median {comp["median_s"]:.3f}): {comp["clips_per_s"]:7.1f} clips/s, '
          f'{comp["gflops"]:.1f} GFLOP/s; conv peak {comp["conv_peak_gflops"]:.1f} GFLOP/s')
    print(f'ratios           stage / compute-only {rows["stage_over_compute"]:.2f}; loop / compute-only {rows["loop_over_compute"]:.2f}; '
          f'step / conv peak {rows["step_over_peak"]:.2f}; load average at end {rows["load_end"]:.1f}')
    if args.json: args.json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, **rows), indent=1))


if __name__ == '__main__': main()
