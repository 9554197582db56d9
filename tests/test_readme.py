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
