"""Reports of runs and sweeps: report.md with per-layer tables and PNG plots, sensitivity scans,
the batch collector launch.sh uses, and publishing a finished run.

  write_report(workdir, results, variables=None, targets=None) -> 'workdir/report.md'
  quant_sensitivity(model, variables, split, ks=(1, 2, 3, 4)) -> rows (one per layer, k)
  prune_sensitivity(model, variables, split, ratios=(.25, .5, .75)) -> rows (one per group, ratio)
  write_sensitivity(rows, workdir, 'quant' | 'prune') -> 'workdir/sensitivity_<kind>.md'
  sweep_plots(results_list, out_dir) -> [accuracy_vs_bits.png, accuracy_vs_macs.png]
  python -m qprune.report.collect OUT -> OUT/summary.md, OUT/summary.csv
  python -m qprune.report.publish --workdir=W --to=DIR -> a small, self-contained copy of W
"""
from qprune.report.collect import write_summary
from qprune.report.markdown import REPORT_MD, render, write_report, write_sensitivity
from qprune.report.plots import (
                                 mask_distance_plot,
                                 sweep_plots,
                                 weight_histogram,
                                 weight_histogram_grid,
)
from qprune.report.sensitivity import prune_sensitivity, quant_sensitivity

__all__ = ['write_report', 'render', 'write_sensitivity', 'quant_sensitivity',
           'prune_sensitivity', 'sweep_plots', 'weight_histogram', 'weight_histogram_grid',
           'mask_distance_plot', 'write_summary',
           'REPORT_MD']
