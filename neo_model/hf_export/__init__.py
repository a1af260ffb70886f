"""A neo export as a complete Hugging Face folder: what the evaluation ecosystem loads.

:func:`write_hf_extras` adds to a folder that already holds the weights and ``config.json`` in
the released NEO layout (:func:`neo_model.weights.save_pretrained`):

* ``auto_map`` in ``config.json`` (AutoConfig, AutoModel, AutoModelForCausalLM) and our own
  remote code, the modules of this package: ``configuration_neo_chat.py``,
  ``modeling_neo_chat.py`` (with ``modeling_neo_llm.py``, ``modeling_neo_vit.py``),
  ``image_processing_neo_chat.py`` and ``processing_neo_chat.py``
  (standalone: torch and transformers only, so they run where ``neo`` is not installed);
* the tokenizer the model was trained with (:func:`neo_data.encoding.tokens.load_tokenizer`):
  the slow files ``vocab.json`` / ``merges.txt``, the fast ``tokenizer.json``,
  ``tokenizer_config.json`` with the ``neo1_0`` chat template and every added token at its id
  (NEO's ``<IMG_CONTEXT>`` 151669, ``<img>`` 151670, ``</img>`` 151671), and
  ``special_tokens_map.json``;
* ``generation_config.json`` (stop at ``<|im_end|>``, greedy, never ``<IMG_CONTEXT>``) and
  ``preprocessor_config.json`` (the image processor with the checkpoint's pixel budget).

So ``AutoTokenizer.from_pretrained(folder, trust_remote_code=True)`` and
``AutoModel.from_pretrained(folder, trust_remote_code=True)`` work, as VLMEvalKit's ``NEOChat``
wrapper calls them, and ``neo chat`` / ``neo serve`` read the same folder.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

from neo_data.encoding.tokens import (
    BUILTIN,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    IM_END,
    IM_END_ID,
    IMG_CONTEXT_ID,
    NEO_TOKENS,
    load_tokenizer,
)
from neo_model.config import NeoConfig
from neo_model.model import IMAGENET_MEAN, IMAGENET_STD

REMOTE_CODE = (
    "configuration_neo_chat.py",
    "modeling_neo_chat.py",
    "modeling_neo_llm.py",
    "modeling_neo_vit.py",
    "image_processing_neo_chat.py",
    "processing_neo_chat.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_neo_chat.NEOChatConfig",
    "AutoModel": "modeling_neo_chat.NEOChatModel",
    "AutoModelForCausalLM": "modeling_neo_chat.NEOChatModel",
}
PROCESSOR_AUTO_MAP = {
    "AutoImageProcessor": "image_processing_neo_chat.NEOImageProcessor",
    "AutoProcessor": "processing_neo_chat.NEOProcessor",
}
# neo1_0 (ChatML): a system block only when given; string content, or parts where an image is
# "<image>\n" (neo's user_content layout) that chat() / the processor expand to image tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<image>\\n' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MODEL_MAX_LENGTH = 40960


def write_hf_extras(folder: str | os.PathLike, config: NeoConfig, tokenizer: str = BUILTIN) -> None:
    """Make the export in local ``folder`` (weights and ``config.json`` already there) a
    complete Hugging Face folder; see the module docstring. ``tokenizer`` is the spec the
    model was trained with."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{folder}: no config.json (write the weights first)")
    for name in REMOTE_CODE:
        with files(__package__).joinpath(name).open("rb") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    released = json.loads(config_file.read_text())
    released["auto_map"] = AUTO_MAP
    _write_json(config_file, released)
    write_tokenizer(folder, tokenizer)
    _write_json(folder / "generation_config.json", generation_config())
    _write_json(folder / "preprocessor_config.json", preprocessor_config(config))
    _write_json(
        folder / "processor_config.json",
        {"processor_class": "NEOProcessor", "auto_map": PROCESSOR_AUTO_MAP},
    )


def write_tokenizer(folder: Path, spec: str = BUILTIN) -> None:
    """``tokenizer.json``, ``vocab.json`` + ``merges.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` of the tokenizer named by ``spec``."""
    for name, data in tokenizer_files(spec).items():
        (folder / name).write_bytes(data)


@functools.cache
def tokenizer_files(spec: str = BUILTIN) -> dict[str, bytes]:
    """The tokenizer files of ``spec`` by name (built once per process: a few seconds)."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(load_tokenizer(spec).backend.to_str())  # a copy, default flags
    added = backend.get_added_tokens_decoder()
    missing = {t: i for t, i in NEO_TOKENS.items() if i not in added or added[i].content != t}
    if missing:
        raise ValueError(f"tokenizer {spec!r}: NEO's tokens not at their ids: {missing}")
    decoder = {
        str(i): {
            "content": t.content,
            "lstrip": t.lstrip,
            "normalized": t.normalized,
            "rstrip": t.rstrip,
            "single_word": t.single_word,
            "special": t.special,
        }
        for i, t in sorted(added.items())
    }
    extra = [t.content for _, t in sorted(added.items()) if t.special]
    extra = [s for s in extra if s not in (ENDOFTEXT, IM_END)]
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }
    specials_map = {"additional_special_tokens": extra, "eos_token": IM_END, "pad_token": ENDOFTEXT}
    with tempfile.TemporaryDirectory(prefix="neo-tokenizer-") as tmp:
        backend.save(os.path.join(tmp, "tokenizer.json"))
        backend.model.save(tmp)  # vocab.json, merges.txt: the slow tokenizer's files
        out = {
            name: Path(tmp, name).read_bytes()
            for name in ("tokenizer.json", "vocab.json", "merges.txt")
        }
    out["tokenizer_config.json"] = _json_bytes(config)
    out["special_tokens_map.json"] = _json_bytes(specials_map)
    return out


def generation_config() -> dict:
    """Greedy, stop at ``<|im_end|>``; ``<IMG_CONTEXT>`` is never generated (as in
    :func:`neo_model.generate.generate`)."""
    return {
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "do_sample": False,
        "max_new_tokens": 1024,
        "suppress_tokens": [IMG_CONTEXT_ID],
    }


def preprocessor_config(config: NeoConfig) -> dict:
    """The image processor: released preprocessing with the checkpoint's pixel budget."""
    return {
        "image_processor_type": "NEOImageProcessor",
        "processor_class": "NEOProcessor",
        "auto_map": PROCESSOR_AUTO_MAP,
        "patch_size": config.patch_size,
        "downsample_ratio": 1.0 / config.downsample,
        "min_pixels": config.min_pixels,
        "max_pixels": config.max_pixels,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def _write_json(path: Path, data: dict) -> None:
    path.write_bytes(_json_bytes(data))
