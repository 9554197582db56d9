"""From a compressed model to deployment.

  to_onnx(model, variables, input_shape[, path]) -> bytes   ONNX graph of any zoo model (full,
                                       shrunk, or quantized with weights dequantized), uint8 NHWC
                                       in; of any other Linen model or NNX module from its jaxpr
                                       (`onnx_jaxpr`; input_shape: an example batch); the batch
                                       axis symbolic (dynamic_batch=False: the example's)
  save_codes / qpq_file_to_codes / load_codes              open integer-code .npz (sign, exponent
                                       index, exponent table; numpy-only loader in README)
  shift_conv / shift_dense / shift_apply                   multiplication-free reference: every
                                       power-of-two weight product as an exponent add
  load_run(workdir)                                        the deployable model of a finished run
CLI: `python -m qprune.export --workdir=W --format=onnx|codes [--out=PATH]`.
"""
from qprune.deploy.codes import FORMAT as CODES_FORMAT
from qprune.deploy.codes import (
                                 CodesFormatError,
                                 decode_codes,
                                 load_codes,
                                 qpq_file_to_codes,
                                 qpq_to_codes,
                                 save_codes,
)
from qprune.deploy.onnx_export import (
                                 OnnxNotInstalledError,
                                 UnsupportedModelError,
                                 to_onnx,
                                 to_onnx_model,
)
from qprune.deploy.onnx_jaxpr import UnsupportedPrimitiveError, jaxpr_to_onnx
from qprune.deploy.runs import ExportError, RunModel, find_qpq, load_run
from qprune.deploy.shift import (
                                 NotPowerOfTwoError,
                                 power_of_two_codes,
                                 shift,
                                 shift_apply,
                                 shift_conv,
                                 shift_dense,
                                 shift_fallbacks,
)

__all__ = ['to_onnx', 'to_onnx_model', 'save_codes', 'load_codes', 'decode_codes',
           'qpq_to_codes', 'qpq_file_to_codes', 'CODES_FORMAT', 'shift', 'shift_conv',
           'shift_dense', 'shift_apply', 'shift_fallbacks', 'power_of_two_codes', 'load_run',
           'find_qpq', 'RunModel', 'ExportError', 'CodesFormatError', 'UnsupportedModelError',
           'OnnxNotInstalledError', 'NotPowerOfTwoError', 'jaxpr_to_onnx',
           'UnsupportedPrimitiveError']
