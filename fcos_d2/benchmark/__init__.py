"""Speed, memory, size and FLOPs of fcos_d2 next to other detectors (``tools/benchmark.py``).

- :mod:`.measurement`: repeated timings and the peak memory of a phase.
- :mod:`.inputs`: random images and boxes, in each model's input format.
- :mod:`.contenders`: the models compared, each with how to feed it.
- :mod:`.phases`: a training step and an inference of a whole model, mixed precision.
- :mod:`.model_size`: parameter count and FLOPs.
- :mod:`.stages`: fcos_d2 stage by stage, from the profiler ranges of its own forward,
  and its target assignment against the number of boxes.
- :mod:`.runner`: all of it for the chosen models, as JSON-ready results.
- :mod:`.report`: those results as tables, and as a JSON file.
"""
