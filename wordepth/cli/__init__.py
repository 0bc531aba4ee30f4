"""The command-line programs: argument parsing and ``main(argv=None)``; the work is done by the library.

Console commands (``[project.scripts]`` in ``pyproject.toml``). ``python -m wordepth.cli.<module>`` runs
the same program, and so does ``python scripts/<script>`` in a checkout without ``pip install -e .``
(``train.py`` and ``eval.py`` at the top, the original's entry points, for the first two):

========================== ============== ================ ==================================================
command                    module         script           does
========================== ============== ================ ==================================================
``wordepth-train``         ``train``      ``train.py``     train; options in `options`
``wordepth-eval``          ``eval``       ``eval.py``      evaluate a checkpoint
``wordepth-predict``       ``predict``    predict.py       depth for your images and videos, prior samples
``wordepth-text``          ``text``       text.py          ``caption`` / ``extract`` / ``prepare`` / ``mean``
``wordepth-synthetic``     ``synthetic``  synthetic.py     a small synthetic NYU/KITTI dataset
``wordepth-pack-text``     ``pack_text``  pack_text.py     pack per-image text features into one array
``wordepth-download``      ``download``   download.py      the original release's splits, captions, features
``wordepth-compare``       ``compare``    compare.py       metrics files -> Markdown table and bar chart
``wordepth-demo``          ``demo``       demo.py          synthetic data -> train -> evaluate -> pictures
``wordepth-convert``       ``convert``    convert.py       a checkpoint -> ``.safetensors`` (no pickle)
``wordepth-eval-zeroshot`` ``zeroshot``   eval_zeroshot.py zero-shot SUN RGB-D, iBims-1, DIODE (docs/zeroshot.md)
``wordepth-app``           ``app``        app.py           the web app (docs/demo.md)
``wordepth-export``        ``export``     export.py        the image network as an ONNX graph
``wordepth-sweep``         ``sweep``      sweep.py         train several seeds, report mean and std
========================== ============== ================ ==================================================

``main`` of ``train``, ``eval``, ``demo``, ``zeroshot`` and ``sweep`` returns the result (metrics) to
Python callers; their console commands call ``console``, which drops it, since a console command's
return value becomes its exit status. Argument groups used by several commands live in `common`;
user errors end every command through :func:`wordepth.errors.user_errors`.
"""
