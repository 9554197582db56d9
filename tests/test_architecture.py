"""The package's layering: every module imports only from lower layers (README, Architecture).

A failure names the import that points up (or sideways between siblings): move the shared piece
down, or the importing code up.
"""
import ast
import os

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
    'modes': 8, 'report': 8, 'benchmarks': 8, 'export': 8,
    'main': 9,
}


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
