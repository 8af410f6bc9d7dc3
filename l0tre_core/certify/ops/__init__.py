"""The ONNX operator families bound propagation supports, one module each.

``affine`` (composed into linear nodes), ``shape`` (moves of values, also composed) and
``activation`` (the nonlinear nodes with their evaluation, interval bounds and relaxations). Each
module's ``HANDLERS`` maps ONNX op types to import handlers; ``certify/importer.py`` merges them
into the one registry it dispatches on.
"""
