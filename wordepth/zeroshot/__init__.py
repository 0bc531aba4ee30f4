"""Zero-shot evaluation of a trained model on SUN RGB-D, iBims-1 and DIODE (docs/zeroshot.md).

* `data`: the three evaluation sets, read exactly as distributed (one ``Dataset`` each);
* `evaluate`: prediction, the published protocols' masks, caps and alignments, the nine metrics,
  the table and its JSON.

The command is ``wordepth-eval-zeroshot`` (`wordepth.cli.zeroshot`); the datasets' facts (sizes,
depth units, protocols and their sources) live with every other dataset's in `wordepth.data.facts`;
small generated copies of the three layouts for tests and demos: `wordepth.data.generated.zeroshot_fixtures`.
"""
