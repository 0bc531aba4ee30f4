"""Datasets this project generates, so that every path runs without downloads: a synthetic NYU/KITTI
dataset in the original layout (`synthetic`, ``wordepth-synthetic``), the scale-ambiguity rooms of
the toy experiment and the demo model (`scale_rooms`), and small copies of the zero-shot layouts
(`zeroshot_fixtures`). The real loaders are one level up, in `wordepth.data`."""
