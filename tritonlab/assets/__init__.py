"""What the model repository holds besides configs: the Food-11 weights, BLIP, the ONNX export,
the sample images, and the models' own code imported in-process.

Layer: uses only `tritonlab.settings` and `tritonlab.common`; never imports `tritonlab.serving`
or `tritonlab.measuring`.
"""
