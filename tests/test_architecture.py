"""The package's layering: every module imports only from lower layers (docs/architecture.md).

A failure names the import that points up (or sideways between siblings): move the shared piece
down, or the importing code up. Imports made inside functions count like any other: a deferred
import is still a dependency. Inside a unit, modules import each other without a circle.
"""
import ast
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'qprune')

# unit (a subpackage or top-level module of qprune) -> layer; a unit imports only strictly lower
# layers (and itself). Units on one layer are siblings and do not import each other.
LAYERS = {
    'errors': 0, 'records': 0,
    'files': 1, 'interrupts': 1, 'distributed': 1,
    'ops': 2,
    'models': 3, 'data': 3,
    'train': 4,
    'quant': 5, 'prune': 5,
    'artifacts': 6, 'configs': 6,
    'deploy': 7,
    'modes': 8, 'report': 8, 'export': 8,
    'main': 9,
}
# The binary in three: the run orchestration (runner), the command line (cli), main on top.
LAYERS.update({'runner': 9, 'cli': 10, 'main': 11})


def _unit(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else 'qprune'


def import_edges():
  """[(file, importing unit, imported unit)] of every qprune import between units."""
  edges = []
  for folder, _, names in os.walk(ROOT):
    for name in names:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = 'qprune.' + os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
      module = module.removesuffix('.__init__')
      source = _unit(module)
      for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
          if node.module == 'qprune':
            targets = [f'qprune.{a.name}' for a in node.names]
          elif node.module.startswith('qprune.'):
            targets = [node.module]
        elif isinstance(node, ast.Import):
          targets = [a.name for a in node.names if a.name.startswith('qprune.')]
        for target in targets:
          unit = _unit(target)
          if unit != source:
            edges.append((os.path.relpath(path, ROOT), source, unit))
  return edges


# Import circles between two modules of one unit that are known and being removed: each entry
# (module, module) with why it is still there. Nothing else may be added here.
KNOWN_CIRCLES: set = set()  # none: a circle is broken by moving the shared piece down


def module_graph(root: str = ROOT):
  """{module: {qprune modules it imports}} over every import statement, function-level ones
  included (`from qprune.a import b` names the module qprune.a.b where that is one)."""
  paths = {}
  for folder, _, names in os.walk(root):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = 'qprune.' + os.path.relpath(path, root)[:-3].replace(os.sep, '.')
        paths[module.removesuffix('.__init__')] = path
  graph = {}
  for module, path in paths.items():
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == 'qprune' or node.module.startswith('qprune.'):
          for alias in node.names:
            submodule = f'{node.module}.{alias.name}'
            targets.add(submodule if submodule in paths else node.module)
      elif isinstance(node, ast.Import):
        targets |= {a.name for a in node.names if a.name in paths}
    graph[module] = {t for t in targets if t in paths and t != module}
  return graph


def import_circles(graph):
  """The strongly connected sets of two or more modules (Tarjan), each sorted."""
  index, low, stack, on_stack, circles = {}, {}, [], set(), []
  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      members = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        members.append(w)
        if w == v:
          break
      if len(members) > 1:
        circles.append(tuple(sorted(members)))
  for v in sorted(graph):
    if v not in index:
      visit(v)
  return circles


def test_no_import_circles_not_even_inside_a_unit():
  circles = [c for c in import_circles(module_graph()) if c not in KNOWN_CIRCLES]
  assert not circles, 'import circles (break them by moving the shared piece down):\n' + \
      '\n'.join(' <-> '.join(c) for c in circles)


def test_the_circle_check_sees_function_level_imports(tmp_path):
  unit = tmp_path / 'report'
  unit.mkdir()
  (unit / '__init__.py').write_text('')
  (unit / 'collect.py').write_text('def f():\n  from qprune.report import plots\n')
  (unit / 'plots.py').write_text('from qprune.report.collect import f\n')
  (unit / 'markdown.py').write_text('import qprune.report.plots\n')
  graph = module_graph(str(tmp_path))
  assert graph['qprune.report.markdown'] == {'qprune.report.plots'}
  assert import_circles(graph) == [('qprune.report.collect', 'qprune.report.plots')]


def test_the_library_never_imports_the_research_harness():
  offenders = []
  for folder, _, names in os.walk(ROOT):
    for name in (n for n in names if n.endswith('.py')):
      path = os.path.join(folder, name)
      for node in ast.walk(ast.parse(open(path).read())):
        modules = ([node.module or ''] if isinstance(node, ast.ImportFrom) else
                   [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        offenders += [f'{os.path.relpath(path, ROOT)}: {m}' for m in modules
                      if m.split('.')[0] == 'reproduce']
  assert not offenders, offenders


def test_files_imports_only_the_standard_library_at_import():
  """The collector (run by path, no JAX) and the harness share the one atomic writer."""
  tree = ast.parse(open(os.path.join(ROOT, 'files.py')).read())
  top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
  imported = {a.name.split('.')[0] for n in top if isinstance(n, ast.Import) for a in n.names}
  imported |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
  not_standard = {m for m in imported - {'qprune.errors'}
                  if m.split('.')[0] not in sys.stdlib_module_names}
  assert not not_standard, not_standard


def test_every_unit_has_a_layer():
  units = {os.path.splitext(n)[0] for n in os.listdir(ROOT)
           if n.endswith('.py') or os.path.isdir(os.path.join(ROOT, n, ''))} - {'__init__',
                                                                                  '__pycache__'}
  assert units <= set(LAYERS), f'give these a layer in LAYERS: {sorted(units - set(LAYERS))}'


def test_imports_point_down_the_stack():
  upward = [f'{path}: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS.get(dst)})'
            for path, src, dst in import_edges()
            if src != 'qprune' and (dst == 'qprune' or LAYERS[dst] >= LAYERS[src])]
  assert not upward, '\n'.join(upward)


def test_records_import_only_the_standard_library():
  tree = ast.parse(open(os.path.join(ROOT, 'records.py')).read())
  imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
              for a in n.names}
  imported |= {n.module.split('.')[0] for n in ast.walk(tree)
               if isinstance(n, ast.ImportFrom) and n.module}
  assert imported <= {'dataclasses', 'math', 'typing'}, imported


def test_public_surface_is_curated():
  """`__all__` of the pytree-transform packages lists exactly what they export."""
  import qprune.prune
  import qprune.quant
  for package in (qprune.prune, qprune.quant):
    public = {n for n in dir(package) if not n.startswith('_')
              and type(getattr(package, n)).__name__ != 'module'}
    assert public == set(package.__all__), (package.__name__,
                                            sorted(public ^ set(package.__all__)))
    assert len(package.__all__) == len(set(package.__all__))
