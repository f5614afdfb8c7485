"""The course's package, in three layers whose imports run one way:

- `tritonlab.assets`: what the model repository holds (weights, BLIP, ONNX export, samples,
  the models' own code);
- `tritonlab.serving`: running Triton and changing what it serves (the server in either mode,
  configs, deploy, devices, clients); uses assets;
- `tritonlab.measuring`: measuring it (perf_analyzer, results, reports, metrics, plots, stages,
  cold starts, bench); uses serving and assets.

`settings` (paths, quick mode, Triton's address) and `common` (logger, atomic writes, waiting)
sit below all three; `api`, `lab` and `cli` on top. `chameleon` (notebook 00's lease, with
python-chi) imports nothing of the course.
"""
