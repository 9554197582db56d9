"""Transparent huge pages for glibc's malloc, which qprune's binaries switch on by re-executing.

Why: a CPU train step allocates and frees several hundred MB of XLA temporaries. glibc hands
large freed blocks back to the kernel (munmap above its mmap threshold, heap trimming), so every
step page-faults that memory in again, 4 KiB at a time: about 0.28 of the 2 cores went to kernel
time on ResNet-20 at batch 256. glibc >= 2.35 has the tunable `glibc.malloc.hugetlb=1`, which
madvise()s the memory malloc gets as MADV_HUGEPAGE, so that with the kernel's transparent huge
pages in 'madvise' mode it is faulted in 2 MiB at a time: ResNet-20 at batch 256 trained at 267
vs 222 img/s here (`python -m reproduce.benchmarks.train_step --variants=qprune,qprune_4k`).

glibc reads tunables only at process start, so `reexec_with_hugepages()` re-executes the binary
once, with the tunable added to GLIBC_TUNABLES, before it has done any work. It is a no-op when
the tunable is already set (so it never loops), on non-Linux or non-glibc systems, on glibc older
than 2.35, when the kernel's THP mode is not 'madvise' ('always' already gives huge pages,
'never' cannot), and when QPRUNE_HUGEPAGES=0. Library code never calls it: only the `__main__`
blocks of the binaries, where replacing the process image is expected. It says so on stderr only
when asked (`-v 1` / `--verbosity=1` on the command line, or QPRUNE_VERBOSE=1).
"""
import os
import sys
from collections.abc import Mapping

TUNABLE = 'glibc.malloc.hugetlb'
SWITCH = 'QPRUNE_HUGEPAGES'
VERBOSE = 'QPRUNE_VERBOSE'  # '1': report the re-exec on stderr (as -v / --verbosity >= 1 does)
_THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
_MIN_GLIBC = (2, 35)
_DETECT = object()


def glibc_version() -> tuple | None:
  """(major, minor) of the running glibc, or None if this is not glibc."""
  try:
    name, version = (os.confstr('CS_GNU_LIBC_VERSION') or '').split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != 'glibc':
    return None
  try:
    return tuple(int(v) for v in version.split('.')[:2])
  except ValueError:
    return None


def thp_mode(path: str = _THP_MODE_FILE) -> str | None:
  """The kernel's transparent huge page mode: 'always', 'madvise', 'never', or None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def hugepage_env(environ: Mapping[str, str], *, platform: str = sys.platform,
                 glibc=_DETECT, thp=_DETECT) -> dict | None:
  """The environment to re-execute with so that malloc uses huge pages, or None if no re-exec
  is needed or possible. `glibc` ((major, minor) or None) and `thp` (a mode or None) default to
  this machine's `glibc_version()` and `thp_mode()`."""
  if environ.get(SWITCH, '1') == '0' or not platform.startswith('linux'):
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if TUNABLE in tunables:
    return None
  glibc = glibc_version() if glibc is _DETECT else glibc
  thp = thp_mode() if thp is _DETECT else thp
  if glibc is None or glibc < _MIN_GLIBC or thp != 'madvise':
    return None
  return {**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, f'{TUNABLE}=1']))}


def default_malloc_env(environ: Mapping[str, str]) -> dict:
  """`environ` with any `glibc.malloc.hugetlb` setting removed from GLIBC_TUNABLES."""
  tunables = [t for t in environ.get('GLIBC_TUNABLES', '').split(':')
              if t and not t.startswith(TUNABLE)]
  return {**environ, 'GLIBC_TUNABLES': ':'.join(tunables)}


def verbose(argv, environ: Mapping[str, str]) -> bool:
  """Whether the user asked for start-up details: $QPRUNE_VERBOSE (not '' or '0'), or absl's
  `-v N` / `-v=N` / `--verbosity=N` / `--v N` with N >= 1 in `argv` (read before absl parses)."""
  if environ.get(VERBOSE, '') not in ('', '0'):
    return True
  names = ('-v', '--v', '-verbosity', '--verbosity')
  for i, arg in enumerate(argv):
    name, eq, value = arg.partition('=')
    if name not in names:
      continue
    if not eq:
      value = argv[i + 1] if i + 1 < len(argv) else ''
    try:
      if int(value) >= 1:
        return True
    except ValueError:
      pass
  return False


def reexec_with_hugepages() -> None:
  """Replaces this process by the same command line with `hugepage_env`, if it returns one.

  Call first thing in a binary's `__main__` block. The process keeps its PID; what was printed
  is flushed first; `sys.orig_argv` keeps interpreter options and `-m module`. One stderr line
  reports it when `verbose(sys.argv, os.environ)`.
  """
  env = hugepage_env(os.environ)
  if env is None or not sys.executable:
    return
  if verbose(sys.argv[1:], os.environ):
    print(f'qprune: huge-page malloc: re-executing with GLIBC_TUNABLES={env["GLIBC_TUNABLES"]} '
          f'({SWITCH}=0 turns this off)', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def anon_huge_mib() -> float | None:
  """MiB of this process's anonymous memory backed by transparent huge pages (Linux), or None."""
  try:
    with open('/proc/self/smaps_rollup') as f:
      for line in f:
        if line.startswith('AnonHugePages:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None
