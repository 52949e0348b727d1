"A fresh clone materialises the embedded data exactly as the README's study command does, and it matches data.dvc."
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _env():
    "PATH with this interpreter's scripts (fgkv, dvc) first, as scripts/run-study sets it."
    return {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}


def test_fresh_clone_materialises_data_dvc(tmp_path):
    clone = tmp_path / 'fgkv'
    subprocess.run(['git', 'clone', '--quiet', str(ROOT), str(clone)], check=True)
    assert not (clone / 'data' / 'raw').exists()
    run = subprocess.run(['bash', 'scripts/materialise-data'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'restored from the DVC remote' in run.stdout, run.stdout
    status = subprocess.run(['dvc', 'status', 'data.dvc'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert status.returncode == 0 and 'up to date' in status.stdout, status.stdout + status.stderr
    # run again: nothing to do
    again = subprocess.run(['bash', 'scripts/materialise-data'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0 and 'data/raw matches data.dvc' in again.stdout, again.stdout + again.stderr

    # the recipe and the record agree: rendering and encoding a sample of the videos with the library writes the
    # recorded bytes (the record was written by `fgkv synth` with 2 worker processes, this in the test's process)
    from fgkv.config import load_params
    from fgkv.synth import CRF, FPS, GOP, dataset_plan, render_clip
    from fgkv.video import write_video
    sampled = 0
    for key, s in load_params(clone / 'params.yaml').synth.items():
        plan = dataset_plan(s.classes, s.per_class)
        sample = plan[::max(1, len(plan) // 20)]
        for e in sample:
            frames = render_clip(s.seed, e['cls'], e['group'], e['clip'], s.frames, s.size, s.scenes, s.class_look, s.object_scale,
                                 s.background_contrast, s.distractors)
            written = write_video(tmp_path / 'sample' / key / e['path'], frames, fps=FPS, crf=CRF, gop=GOP).read_bytes()
            assert written == (clone / 'data' / 'raw' / key / 'videos' / e['path']).read_bytes(), f'{key}/{e["path"]} differs from data.dvc'
        sampled += len(sample)
    assert sampled >= 40


def test_materialise_refuses_unrecorded_data(tmp_path):
    clone = tmp_path / 'fgkv'
    subprocess.run(['git', 'clone', '--quiet', str(ROOT), str(clone)], check=True)
    (clone / 'data' / 'raw' / 'videos').mkdir(parents=True)
    (clone / 'data' / 'raw' / 'videos' / 'mine.mp4').write_bytes(b'a user video')
    run = subprocess.run(['bash', 'scripts/materialise-data'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert run.returncode == 1 and 'data.dvc does not record' in run.stdout, run.stdout + run.stderr
    assert (clone / 'data' / 'raw' / 'videos' / 'mine.mp4').read_bytes() == b'a user video'   # nothing lost


def _record_small_dataset(clone:Path):
    "Re-record data.dvc in `clone` for a small synth section (seconds, not minutes, to regenerate), and drop every copy of it."
    params = clone / 'params.yaml'
    params.write_text(re.sub(r'per_class: \d+', 'per_class: 4', params.read_text()))
    subprocess.run(['fgkv', 'synth', '--params', 'params.yaml', '--out', 'data/raw', '--workers', '2'],
                   cwd=clone, env=_env(), check=True, capture_output=True)
    subprocess.run(['dvc', 'commit', '--force', '--quiet', 'data.dvc'], cwd=clone, env=_env(), check=True, capture_output=True)
    for folder in ('data/raw', '.dvc/cache', 'data/remote'): shutil.rmtree(clone / folder)


def test_materialise_falls_back_to_synth(tmp_path):
    "A remote that lacks the data (say, data.dvc re-recorded without `dvc push`): the script regenerates it with fgkv synth."
    clone = tmp_path / 'fgkv'
    subprocess.run(['git', 'clone', '--quiet', str(ROOT), str(clone)], check=True)
    _record_small_dataset(clone)
    run = subprocess.run(['bash', 'scripts/materialise-data'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'regenerating data/raw with fgkv synth' in run.stdout and 'data/raw matches data.dvc' in run.stdout, run.stdout
    # data that does not hash to the record (here: another seed, as another FFmpeg build would give) is refused, naming the fix
    recorded = (clone / 'data.dvc').read_text()
    params = clone / 'params.yaml'
    params.write_text(params.read_text().replace('    seed: 0\n    scenes:', '    seed: 1\n    scenes:', 1))
    for folder in ('data/raw', '.dvc/cache'): shutil.rmtree(clone / folder)   # the cache would restore the record
    run = subprocess.run(['bash', 'scripts/materialise-data'], cwd=clone, env=_env(), capture_output=True, text=True)
    assert run.returncode == 1 and "data/raw does not match data.dvc: 'dvc pull'" in run.stdout, run.stdout + run.stderr
    assert (clone / 'data.dvc').read_text() == recorded   # the record is never rewritten
