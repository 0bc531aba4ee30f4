"""The demos: `pipeline`, the pieces of ``wordepth-demo`` / ``sh run_demo.sh`` (synthetic data -> train ->
evaluate -> pictures), and `toy`, the tiny demo model behind ``wordepth-app --demo`` and the
scale-ambiguity experiment (trained through the one training loop, `wordepth.engine`). The web app
itself is `wordepth.app`."""
