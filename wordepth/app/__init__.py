"""The web app: change the sentence, watch the scale change (Gradio; the command is ``wordepth-app``).

Four views of one model:

- **Depth**: a photo and a caption -> metric depth as a colour map with a colour bar in metres, a
  photo/depth slider, downloads (16-bit PNG, colour PNG, PLY, .npy, all as .zip), an optional 3D
  point cloud with the model's camera; several photos at once;
- **Compare**: one photo, two sentences -> both depth maps on one colour scale, an A/B slider and
  their ratio;
- **Text only**: K depth maps sampled from a sentence (the text branch);
- **Video**: a clip and a sentence -> each frame beside its depth (WebM).

:mod:`~wordepth.app.uploads` reads uploads within fixed limits (a decompression bomb is refused from
its header); :class:`~wordepth.app.views.DepthApp` computes the views on files and arrays (no
Gradio; the tests call it directly); :func:`~wordepth.app.layout.build_app` lays them out in Gradio,
imported only then (``pip install -e .[demo]``), with analytics off and nothing fetched from the internet.
"""
from wordepth.app.layout import INSTALL_HINT, build_app, launch, require_gradio, status_html
from wordepth.app.uploads import NOT_AN_IMAGE, AppError, Limits, check_video, read_photo
from wordepth.app.views import NO_CAPTION, NO_IMAGE, AppText, DepthApp, ResultStore, colorbar_html, demo_text

__all__ = ["INSTALL_HINT", "NOT_AN_IMAGE", "NO_CAPTION", "NO_IMAGE", "AppError", "AppText", "DepthApp", "Limits",
           "ResultStore", "build_app", "check_video", "colorbar_html", "demo_text", "launch", "read_photo",
           "require_gradio", "status_html"]
