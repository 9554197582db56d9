"""README's library example runs as written."""
import os
import re

from conftest import REPO_ROOT


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
  readme = open(os.path.join(REPO_ROOT, 'README.md')).read()
  section = readme.split('## Library API', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  exec(compile(code, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  assert (tmp_path / 'lenet5.qpq').exists()
  nbytes, params, macs = map(int, capsys.readouterr().out.strip().splitlines()[-1].split())
  assert nbytes == os.path.getsize(tmp_path / 'lenet5.qpq')
  assert params < 431_150 / 2 and macs < 2_293_000 / 2


def test_docs_any_linen_model_example_runs(capsys):
  page = open(os.path.join(REPO_ROOT, 'docs', 'library.md')).read()
  section = page.split('## Any Linen model', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  exec(compile(code, 'docs/library.md', 'exec'), {})  # pylint: disable=exec-used
  line = capsys.readouterr().out.strip().splitlines()[-1].split()
  params_before, params_after = int(line[2]), int(line[4])
  assert line[0] == 'TinyResNet' and params_after < params_before
