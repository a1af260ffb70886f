"""NEO's processor (remote code, ``AutoProcessor``), written by ``neo``: text with ``<image>``
placeholders plus PIL images -> ``input_ids``, ``attention_mask``, ``pixel_values``, ``grid_hw``.

Each ``<image>`` becomes ``<img>`` + ``<IMG_CONTEXT>`` x (tokens of that image) + ``</img>``, as
``NEOChatModel.chat`` does; the images go through ``NEOImageProcessor``. Standalone
(transformers only).
"""

from __future__ import annotations

from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

PLACEHOLDER = "<image>"


class NEOProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(
        self, text: str | list[str], images=None, return_tensors: str = "pt", **kwargs: Any
    ):
        """``text`` (one string or a list) with one ``<image>`` per image, in order."""
        texts = [text] if isinstance(text, str) else list(text)
        images = [] if images is None else images
        images = [images] if not isinstance(images, list | tuple) else list(images)
        expected = sum(t.count(PLACEHOLDER) for t in texts)
        if expected != len(images):
            raise ValueError(f"{expected} {PLACEHOLDER} placeholders but {len(images)} images")
        data: dict[str, Any] = {}
        if images:
            vision = self.image_processor(images, return_tensors="pt")
            data.update(vision)
            merge = round(1 / self.image_processor.downsample_ratio) ** 2
            counts = iter((vision["grid_hw"].prod(-1) // merge).tolist())
            expanded = []
            for t in texts:
                pieces = t.split(PLACEHOLDER)
                out = pieces[0]
                for piece in pieces[1:]:
                    out += "<img>" + "<IMG_CONTEXT>" * next(counts) + "</img>" + piece
                expanded.append(out)
            texts = expanded
        data.update(self.tokenizer(texts, return_tensors=return_tensors, **kwargs))
        return BatchFeature(data=data)
