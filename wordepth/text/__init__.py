"""Text pipeline: CoCa captions for images and frozen CLIP text features for captions."""
from wordepth.data.images import collect_images
from wordepth.text.captioning import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    FALLBACK_CAPTION,
    caption_images,
    caption_path,
    clean_caption,
    generate_captions,
    load_captioner,
    read_caption,
    write_caption,
)
from wordepth.text.clip_features import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    WeightsUnavailableError,
    encode_captions,
    load_text_encoder,
    resolve_weights,
    text_feature_dim,
    write_text_features,
)

__all__ = [
    "DEFAULT_CAPTION_MODEL",
    "DEFAULT_CAPTION_PRETRAINED",
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_CLIP_PRETRAINED",
    "FALLBACK_CAPTION",
    "WeightsUnavailableError",
    "caption_images",
    "caption_path",
    "clean_caption",
    "collect_images",
    "encode_captions",
    "generate_captions",
    "load_captioner",
    "load_text_encoder",
    "read_caption",
    "resolve_weights",
    "text_feature_dim",
    "write_caption",
    "write_text_features",
]
