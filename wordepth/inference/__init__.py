"""Inference: one path under every command and the app.

* `predictor`: :class:`Predictor` (photo + caption -> metric depth) and :func:`sample_prior`, the one
  prior sampler;
* `files`: ``wordepth-predict``'s file, batch and output layer over the predictor;
* `video`: depth for a video, frame by frame, through the predictor;
* `export`: the image network as an ONNX graph (``wordepth-export``) and the graph's runner.
"""
