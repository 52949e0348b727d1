"""Decoded-and-augmented clips per second for one data-loader worker (a benchmark, not a test).

    python bench/loader.py [--clips 40] [--params params.yaml]

Rows: 16x4@112 pre-training clips from a real UCF101 clip (Xvid AVI, keyframes every 12 frames)
for each available decoder backend; the same from a synthetic video; and the default config of
params.yaml (over its synthetic data, read from files and from the in-memory cache). One thread,
as in a data-loader worker.
"""
import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from fgkv.config import load_params
from fgkv.core import sample_generator
from fgkv.datasets import ClipDataset, FrameSource, VideoRecord
from fgkv.synth import synthesize_dataset
from fgkv.transforms import PretrainAugment
from fgkv.video import available_backends, probe_video

REAL_UCF = Path(__file__).resolve().parents[2] / 'shared/data/real/videos/torchvision/v_SoccerJuggling_g23_c01.avi'


def clips_per_second(dataset, n):
    "(decode-only, decode+augment) clips/s of `dataset` over `n` items."
    rates = []
    for transform in (lambda clip, g: clip, dataset.transform):
        ds = copy.copy(dataset); ds.transform = transform
        ds[0]                                    # warm-up: opens files, builds indices
        t = time.perf_counter()
        for i in range(n): ds.set_epoch(i); ds[i % len(ds)]
        rates.append(n * ds.num_clips / (time.perf_counter() - t))
    return rates


def dataset(paths, backend, frames, stride, size, cache=False, rho=2):
    records = [VideoRecord(p, 0, probe_video(p)) for p in paths]
    aug = PretrainAugment(crop_size=size)
    return ClipDataset(records, 'pretrain', aug, frames, stride, rho, source=FrameSource(records, backend, 1, cache=cache))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--clips', type=int, default=40, help='pre-training items (2 clips each) per row')
    ap.add_argument('--params', default='params.yaml')
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    backends = available_backends()
    tmp = Path(tempfile.mkdtemp())
    synthesize_dataset(tmp / 'synth', classes=2, per_class=2, frames=64, size=128, seed=0)
    synth_videos = sorted((tmp / 'synth/videos').rglob('*.mp4'))
    for backend in backends:
        if REAL_UCF.exists():
            rows.append((f'real UCF101 avi, 16x4@112, {backend}', clips_per_second(dataset([REAL_UCF], backend, 16, 4, 112), args.clips)))
        rows.append((f'synthetic 128px mp4, 16x4@112, {backend}', clips_per_second(dataset(synth_videos, backend, 16, 4, 112), args.clips)))
    p = load_params(args.params)
    c = p.clips
    synthesize_dataset(tmp / 'default', classes=2, per_class=4, frames=p.synth[p.dataset].frames, size=p.synth[p.dataset].size, seed=0)
    default_videos = sorted((tmp / 'default/videos').rglob('*.mp4'))
    for cache in (False, True):
        ds = dataset(default_videos, p.decode.backend, c.frames, c.stride, c.crop_size, cache=cache, rho=c.num_clips)
        ds.transform = PretrainAugment.from_config(p)   # the default augmentation, not the 112-px one
        rows.append((f'default config {c.frames}x{c.stride}@{c.crop_size} ({p.decode.backend}{", in memory" if cache else ""})',
                     clips_per_second(ds, args.clips)))
    width = max(len(r[0]) for r in rows)
    print(f"{'clips/s per worker (1 thread)':<{width}}  decode  decode+augment")
    for name, (dec, full) in rows: print(f'{name:<{width}}  {dec:6.1f}  {full:14.1f}')


if __name__ == '__main__':
    main()
