"""docs/library.md's NNX example runs as written and prints what the page shows."""
import os
import re

from conftest import REPO_ROOT


def test_docs_nnx_library_example_runs(tmp_path, monkeypatch, capsys):
  page = open(os.path.join(REPO_ROOT, 'docs', 'library.md')).read()
  section = page.split('## Example', 1)[1]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  shown = re.search(r'It prints[^\n]*\n\n```\n(.*?)\n```', section, re.S).group(1)
  monkeypatch.chdir(tmp_path)
  exec(compile(code, 'docs/library.md', 'exec'), {})  # pylint: disable=exec-used
  assert (tmp_path / 'tinynet.qpq').exists()
  printed = capsys.readouterr().out.strip().splitlines()[-1]
  # The structure is exact; the compressed export's size follows the trained weights, which
  # differ in their last bits between processor kinds (4628 bytes on AMD, 4630 on Intel).
  size = r'export (\d+) bytes'
  assert re.sub(size, '', printed) == re.sub(size, '', shown)
  nbytes = int(re.search(size, printed).group(1))
  assert abs(nbytes - int(re.search(size, shown).group(1))) <= 0.01 * nbytes
  assert nbytes == os.path.getsize(tmp_path / 'tinynet.qpq')
