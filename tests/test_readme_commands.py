"The README's `fgkv prepare` examples, run as written with an installed fgkv in an empty folder (no params file)."
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def readme_commands(prefix:str) -> list[str]:
    "Every `prefix ...` command the README shows, in code blocks or inline code."
    text = (ROOT / 'README.md').read_text()
    found = re.findall(r'^(' + re.escape(prefix) + r' [^\n`]*?)\s*$', text, re.M)
    found += re.findall(r'`(' + re.escape(prefix) + r' [^`]*)`', text)
    return list(dict.fromkeys(c.strip() for c in found if '...' not in c and '[' not in c and '{' not in c))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "fgkv installed from the repository into a folder of its own (not the source tree)."
    target = tmp_path_factory.mktemp('site')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation', '--target', str(target), str(ROOT)],
                   check=True, cwd=target)
    return target


def layout_for(command:list[str], root, fixtures):
    "Write the folders a prepare command names: videos in class folders, and split files for HMDB51 / UCF101."
    args = dict(zip(command[2::2], command[3::2]))
    dataset, videos, names = args['--dataset'], root / args['--videos'], {}
    for cls in ('wave', 'shoot_ball'):   # HMDB51's own names: the class is not the first '_' token
        for i, split_id in enumerate((1, 1, 2)):
            name = f'Clip{i}_{cls}_f_nm_np1_fr_med_{i}.avi'
            (videos / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(fixtures['bframes_avi'], videos / cls / name)
            names.setdefault(cls, []).append(f'{name} {split_id}')
    if dataset == 'hmdb51':
        splits = root / args['--annotations']
        splits.mkdir(parents=True)
        for cls, lines in names.items():
            for s in (1, 2, 3): (splits / f'{cls}_test_split{s}.txt').write_text(''.join(f'{l} \n' for l in lines))
    elif dataset != 'folder': pytest.skip(f'no layout writer for the README example with --dataset {dataset}')
    return args


def test_readme_prepare_examples_run_as_written(installed, tmp_path):
    from fgkv.video import write_decoder_fixtures
    fixtures = write_decoder_fixtures(tmp_path / 'fixtures')
    commands = readme_commands('fgkv prepare')
    assert {'hmdb51', 'folder'} <= {shlex.split(c)[shlex.split(c).index('--dataset') + 1] for c in commands}, commands
    for i, command in enumerate(commands):
        work = tmp_path / f'example{i}'   # an empty folder: no params.yaml, no repository
        work.mkdir()
        argv = shlex.split(command)
        args = layout_for(argv, work, fixtures)
        env = {'PYTHONPATH': str(installed), 'PATH': '/usr/bin:/bin'}
        run = subprocess.run([sys.executable, str(installed / 'bin' / 'fgkv'), *argv[1:]], cwd=work, env=env,
                             capture_output=True, text=True)
        assert run.returncode == 0, f'{command}\n{run.stdout}{run.stderr}'
        out = work / args['--out']
        for f in ('train.csv', 'test.csv', 'classes.txt', 'rejected.csv'): assert (out / f).is_file(), (command, f)
        assert len((out / 'train.csv').read_text().splitlines()) > 1, command
        assert (out / 'classes.txt').read_text().split() == ['shoot_ball', 'wave'], command
