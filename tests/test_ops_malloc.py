"""qprune.ops.malloc: when binaries re-execute for huge-page malloc, and that it takes effect."""
import os
import subprocess
import sys

import pytest

from qprune.ops import malloc

_LINUX = dict(platform='linux', glibc=(2, 36), thp='madvise')
_BASE_ENV = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', malloc.SWITCH)}
_NEEDS_HUGEPAGE_MALLOC = pytest.mark.skipif(malloc.hugepage_env(_BASE_ENV) is None,
                                            reason='no glibc >= 2.35 with THP in madvise mode')


def test_adds_the_tunable_on_linux_glibc_with_madvise_thp():
  env = malloc.hugepage_env({'PATH': '/bin'}, **_LINUX)
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}


def test_keeps_other_tunables():
  env = malloc.hugepage_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, **_LINUX)
  assert env['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'


def test_default_malloc_env_removes_only_the_huge_page_tunable():
  env = malloc.default_malloc_env(
      {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'})
  assert env == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}


@pytest.mark.parametrize('environ, overrides', [
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, {}),  # the user's choice stands; no re-exec loop
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, {}),
    ({malloc.SWITCH: '0'}, {}),
    ({}, {'platform': 'darwin'}),
    ({}, {'glibc': (2, 31)}),  # the tunable does not exist before glibc 2.35
    ({}, {'thp': 'always'}),  # already huge pages
    ({}, {'thp': 'never'}),
    ({}, {'thp': None}),  # unknown
    ({}, {'glibc': None}),  # not glibc (musl)
])
def test_no_reexec(environ, overrides):
  assert malloc.hugepage_env(environ, **{**_LINUX, **overrides}) is None


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  path = tmp_path / 'enabled'
  path.write_text('always [madvise] never\n')
  assert malloc.thp_mode(str(path)) == 'madvise'
  assert malloc.thp_mode(str(tmp_path / 'missing')) is None


_MALLOC_64MIB = r'''
import ctypes
from qprune.ops import malloc
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
p = libc.malloc(size)
ctypes.memset(p, 1, size)
print(malloc.anon_huge_mib())
'''


def _huge_mib_after_malloc(env) -> float:
  out = subprocess.run([sys.executable, '-c', _MALLOC_64MIB], env=env, capture_output=True,
                       text=True, check=True)
  return float(out.stdout.split()[-1])


@_NEEDS_HUGEPAGE_MALLOC
def test_tunable_puts_malloc_memory_on_huge_pages():
  without = _huge_mib_after_malloc(_BASE_ENV)
  with_tunable = _huge_mib_after_malloc(malloc.hugepage_env(_BASE_ENV))
  assert with_tunable >= without + 16, (with_tunable, without)  # of the 64 MiB


@_NEEDS_HUGEPAGE_MALLOC
def test_main_binary_reexecutes_once():
  out = subprocess.run([sys.executable, '-m', 'qprune.main', '--helpshort'],
                       env={**_BASE_ENV, malloc.VERBOSE: '1'}, capture_output=True, text=True,
                       check=False)
  assert '--workdir' in out.stdout, out.stderr[-2000:]  # the help was printed after the re-exec
  assert out.stderr.count(
      'huge-page malloc: re-executing with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 ') == 1


@pytest.mark.parametrize('argv, environ, expected', [
    ([], {}, False),
    (['--config=c.py'], {malloc.VERBOSE: '0'}, False),
    ([], {malloc.VERBOSE: '1'}, True),
    (['-v', '1'], {}, True),
    (['-v=2'], {}, True),
    (['--verbosity=1'], {}, True),
    (['--verbosity', '0'], {}, False),
    (['-v'], {}, False),  # no value: absl would refuse it; stay quiet
])
def test_reexec_is_reported_only_when_asked(argv, environ, expected):
  assert malloc.verbose(argv, environ) is expected
