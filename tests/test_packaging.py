"`pip install .` gives a working `fgkv` command and declares runtime dependencies only."
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_pip_install_gives_a_working_command(tmp_path):
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                    '--target', str(target), str(ROOT)], check=True, cwd=tmp_path)
    env = {'PYTHONPATH': str(target), 'PATH': '/usr/bin:/bin'}
    out = subprocess.run([sys.executable, str(target / 'bin' / 'fgkv'), '--help'], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in ('synth', 'prepare', 'probe', 'pretrain', 'evaluate', 'supervise', 'embed', 'profile'): assert command in out.stdout
    where = subprocess.run([sys.executable, '-c', 'import fgkv.video, fgkv.datasets; print(fgkv.__file__)'],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(target)), where          # the installed copy, not the source tree
    meta = next(target.glob('fgkv-*.dist-info')).joinpath('METADATA').read_text()
    requires = [l.split(':', 1)[1].strip() for l in meta.splitlines() if l.startswith('Requires-Dist:')]
    runtime = [r for r in requires if 'extra ==' not in r]
    for dep in ('torch', 'torchvision', 'av', 'decord', 'numpy', 'pyyaml', 'ruamel.yaml', 'fastcore'):   # fastcore: `@patch`
        assert any(r.lower().startswith(dep) for r in runtime), (dep, runtime)
    for dev_only in ('nbdev', 'execnb', 'ghapi', 'papermill', 'dvc'):
        assert not any(r.lower().startswith(dev_only) for r in runtime), (dev_only, runtime)


def test_every_module_imports():
    import importlib
    import fgkv
    modules = [p.stem for p in Path(fgkv.__file__).parent.glob('*.py') if not p.stem.startswith('_')]
    for m in modules: importlib.import_module(f'fgkv.{m}')
