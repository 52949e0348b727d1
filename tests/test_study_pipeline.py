"""The study pipeline as `dvc repro` runs it: every study notebook's shape, and a smoke run of the whole DAG
(prepare → pretrain → evaluate → ablations → analysis → report) on a micro profile in a throwaway copy."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STUDY = sorted((ROOT / 'nbs/study').glob('*.ipynb'))


@pytest.mark.parametrize('nb', STUDY, ids=[p.name for p in STUDY])
def test_study_notebook_has_one_parameters_cell_and_no_outputs(nb):
    cells = json.loads(nb.read_text())['cells']
    tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1, f'{nb.name}: {len(tagged)} cells tagged `parameters` (papermill needs exactly one)'
    assert tagged[0]['cell_type'] == 'code'
    for c in cells:
        if c['cell_type'] == 'code':
            assert not c.get('outputs') and c.get('execution_count') is None, f'{nb.name}: stored outputs'
            assert '#|export' not in ''.join(c['source']).replace(' ', ''), f'{nb.name}: study notebooks export nothing'


def test_every_stage_runs_a_study_notebook_with_papermill():
    stages = yaml.safe_load((ROOT / 'dvc.yaml').read_text())['stages']
    for name, stage in stages.items():
        cmd = (stage.get('do') or stage)['cmd']
        assert 'papermill -k python3' in cmd, name
        nb = next(w for w in cmd.split() if w.startswith('nbs/study/'))
        assert (ROOT / nb).is_file(), f'{name}: {nb} does not exist'
        assert nb in (stage.get('do') or stage)['deps'], f'{name}: {nb} is not a dependency of its stage'


def micro_params() -> dict:
    "The project's params.yaml shrunk until every stage takes seconds (same keys, same variants and ablations)."
    p = yaml.safe_load((ROOT / 'params.yaml').read_text())
    for synth in p['synth'].values(): synth.update(classes=3, per_class=6, frames=16, size=32, scenes=2)
    for dataset in p['datasets'].values(): dataset['min_frames'] = 8
    p['decode']['cache_in_memory'] = True
    p['clips'].update(frames=4, stride=2, crop_size=32)
    p['downstream'].update(short_side=[32, 40], test_short_side=32, test_clips=2, test_crops=1, retrieval_clips=2)
    p['model'].update(width=0.125, num_slots=16, num_concepts=16, query_hidden=16, proj_hidden=32, proj_dim=16,
                      pred_hidden=32, dict_hidden=32)
    p['memdpc'].update(width=0.125, blocks=5, block_frames=2, crop_size=32, pred_steps=2, num_slots=8)
    p['pretrain'].update(epochs=1, batch_size=4, workers=0, checkpoint_every=1, log_every=1, max_steps=2)
    p['evaluate'].update(workers=0, eval_batch_size=4, efficiency_fractions=[0.5, 1.0])
    for proto in ('linear', 'nonlinear', 'finetune', 'supervised'):
        p['evaluate'][proto].update(epochs=1, batch_size=4, warmup_epochs=0)   # the official presets warm up for 5 epochs
    for name, ablation in p['study']['ablations'].items():
        ablation['overrides'] = [o.replace('=128', '=8') for o in ablation['overrides']]
    return p


def run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f'{" ".join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-8000:]}'
    return res.stdout


def test_dvc_repro_micro_profile(tmp_path):
    from fgkv.config import load_params
    from fgkv.report import report_checklist
    work = tmp_path / 'study'
    work.mkdir()
    for item in ('dvc.yaml', 'nbs/study'):
        (work / item).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copyfile)(ROOT / item, work / item)
    os.symlink(ROOT / 'fgkv', work / 'fgkv')   # a dependency of every stage, as in the project
    (work / 'params.yaml').write_text(yaml.safe_dump(micro_params(), sort_keys=False))
    env = dict(os.environ, MPLBACKEND='Agg', PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    bin_ = Path(sys.executable).parent
    run([str(bin_ / 'fgkv'), 'synth', '--params', 'params.yaml', '--out', 'data/raw', '--workers', '2'], work, env)
    run([str(bin_ / 'dvc'), 'init', '--no-scm', '-q'], work, env)
    run([str(bin_ / 'dvc'), 'repro', '--quiet'], work, env)

    params = load_params(work / 'params.yaml')
    from dvc.repo import Repo
    with Repo(str(work)) as repo:   # every metrics and plots file of every (foreach / matrix) stage, as DVC resolves them
        declared = [('metrics' if out.metric else 'plots', out.def_path) for stage in repo.index.stages for out in stage.outs
                    if out.metric or out.plot]
    variants, datasets, downstream = len(params.study.variants), len(params.datasets), len(params.evaluate.datasets)
    # prepare per dataset, pretrain and evaluate per variant (on each downstream dataset), the ceiling, the floors, ablations, analysis
    test_metrics = datasets + variants + variants * downstream + 1 + 2 * downstream + len(params.study.ablations) + 1
    assert len([d for d in declared if d[0] == 'metrics']) == test_metrics, declared
    for kind, path in declared:
        assert (work / path).is_file(), f'{kind} file {path} was not produced'
        if kind == 'metrics':
            metrics = json.loads((work / path).read_text())
            assert metrics and all(isinstance(v, (int, float, str, bool, type(None))) for v in metrics.values()), path
            assert not any('time' in k or k.endswith('_s') for k in metrics), f'{path}: wall-clock values in metrics'
    report = (work / 'reports/report.md').read_text()
    missing = [item for item in report_checklist(params) if item not in report]
    assert not missing, f'reports/report.md does not mention {missing}'
    for figure in (work / 'reports/figures').glob('*.png'):
        assert f'figures/{figure.name}' in report, f'the report does not show {figure.name}'

    # a second run has nothing to do; changing one ablation value invalidates only that ablation (and the report)
    status = run([str(bin_ / 'dvc'), 'status', '--json'], work, env)
    assert json.loads(status) == {}, status
    p = micro_params()
    first = next(iter(p['study']['ablations']))
    p['study']['ablations'][first]['overrides'] = [o.replace('=8', '=4') for o in p['study']['ablations'][first]['overrides']]
    (work / 'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    changed = set(json.loads(run([str(bin_ / 'dvc'), 'status', '--json'], work, env)))
    assert changed == {f'ablation@{first}', 'report'}, changed
