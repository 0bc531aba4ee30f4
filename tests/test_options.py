"""The training/evaluation options: defaults when a flag is absent are the original's."""
from wordepth.cli.options import build_parser


def test_parser_defaults_are_the_originals():
    """The original's src/train.py: lr 1e-4, weight decay 1e-2, end lr -1 (constant), variance focus 0.85."""
    args = build_parser().parse_args([])
    assert args.learning_rate == 1e-4
    assert args.weight_decay == 1e-2
    assert args.end_learning_rate == -1
    assert args.variance_focus == 0.85
    assert args.nonfinite == "clamp"  # NaN/inf predictions in evaluation: clamped, as the original does


def test_config_values_override_the_defaults():
    args = build_parser().parse_args(["--learning_rate", "3e-5", "--end_learning_rate", "1e-5",
                                      "--weight_decay", "0", "--nonfinite", "error"])
    assert (args.learning_rate, args.end_learning_rate, args.weight_decay, args.nonfinite) == (3e-5, 1e-5, 0.0, "error")
