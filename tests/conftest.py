"Shared pytest setup: the `slow` tier and paths to the shared real data."
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / 'shared' / 'data' / 'real'


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run tests marked slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)


@pytest.fixture(scope='session')
def real_data() -> Path:
    if not REAL.is_dir(): pytest.skip(f'{REAL} (the shared real clips) is not present')
    return REAL
