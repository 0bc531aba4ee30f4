"""The command-line programs: argument parsing and ``main(argv=None)``; the work is done by the library.

Console commands (``[project.scripts]`` in ``pyproject.toml``; ``python -m wordepth.cli.<module>``
and ``python scripts/<old name>.py`` run the same):

========================== =================  =====================================================
command                    module             does
========================== =================  =====================================================
``wordepth-train``         ``train``          train (``train.py``); options in `options`
``wordepth-eval``          ``eval``           evaluate a checkpoint (``eval.py``)
``wordepth-predict``       ``predict``        depth for your images, prior samples from a caption
``wordepth-text``          ``text``           ``caption`` / ``extract`` / ``prepare``: the text pipeline
``wordepth-synthetic``     ``synthetic``      a small synthetic NYU/KITTI dataset
``wordepth-pack-text``     ``pack_text``      pack per-image text features into one array
``wordepth-download``      ``download``       the original release's splits, captions, features
``wordepth-compare``       ``compare``        metrics files -> Markdown table and bar chart
``wordepth-demo``          ``demo``           synthetic data -> train -> evaluate -> pictures
``wordepth-eval-zeroshot`` ``zeroshot``       zero-shot SUN RGB-D, iBims-1, DIODE (docs/zeroshot.md)
========================== =================  =====================================================

``main`` of ``train``, ``eval``, ``demo`` and ``zeroshot`` returns the result (metrics) to Python
callers; their console commands call ``console``, which drops it, since a console command's return
value becomes its exit status. Argument groups used by several commands live in `common`.
"""
