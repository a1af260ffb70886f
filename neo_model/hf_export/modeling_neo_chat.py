"""NEO 1.0 as a Hugging Face model (remote code, ``trust_remote_code``), written by ``neo``.

Standalone: imports only ``torch``, ``transformers`` and its configuration module, so a neo
export works in an evaluation environment (VLMEvalKit's ``NEOChat`` wrapper) without ``neo``.
Module names are the released checkpoint keys (``vision_model.embeddings.*``,
``language_model.model.layers.{i}.self_attn.*``, ``language_model.lm_head``); the entry points
are those of the released ``NEOChatModel``: ``chat(tokenizer, pixel_values, question,
generation_config, history=None, return_history=False, grid_hw=None, ...)`` and
``generate(pixel_values, input_ids, grid_hw, ...)``.

Inputs, as the released preprocessing makes them (``image_processing_neo_chat``): every image
smart-resized to multiples of 32 px, ImageNet-normalised, cut into 16x16 patches in row-major
order, each patch flattened channel-major -> ``pixel_values [sum(h*w), 3*16*16]`` and
``grid_hw [images, 2]`` (rows, columns of 16-px patches).

What differs from Qwen3 (see the project's architecture notes):

* per head, q and k are ``head_dim`` (T) + ``head_dim/2`` (H) + ``head_dim/2`` (W) wide, each
  part with its own QK-norm and rotate-half RoPE (T: ``rope_theta`` on the T index; H/W:
  ``rope_theta_hw`` on the row / column index); v stays ``head_dim``; one dot product with
  scale ``1/sqrt(head_dim)``;
* positions: every token but ``<IMG_CONTEXT>`` advances T by one, all tokens of an image share
  the T after its ``<img>``; image tokens carry their row / column, all others H = W = 0;
  generated tokens continue T after the largest prompt T;
* the mask: causal, and bidirectional among the tokens of one image -- key j is visible to
  query i when ``T[j] <= T[i]`` (tokens of equal T are exactly one image's tokens);
* ``<IMG_CONTEXT>`` embeddings are replaced by the patch embedding's tokens, in order.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_neo_chat import NEOChatConfig
from .modeling_neo_llm import CACHE_KEY, NEOForCausalLM, NEOPreTrainedModel
from .modeling_neo_vit import NEOVisionModel, grid_positions

IMG_CONTEXT = "<IMG_CONTEXT>"
IMG_START = "<img>"
IMG_END = "</img>"

# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


class NEOChatModel(NEOPreTrainedModel, GenerationMixin):
    """NEO: patch embedding + language model, with the released ``chat`` and ``generate``."""

    main_input_name = "input_ids"

    def __init__(self, config: NEOChatConfig) -> None:
        super().__init__(config)
        self.patch_size = config.vision_config.patch_size
        self.downsample_ratio = config.downsample_ratio
        self.template = config.template
        self.vision_model = NEOVisionModel(config.vision_config)
        self.language_model = NEOForCausalLM(config.llm_config)
        self.img_context_token_id = config.img_context_token_id
        self.img_start_token_id = config.img_start_token_id
        self.system_message = ""  # VLMEvalKit sets it before chat(); empty: no system turn
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_thw_indexes(self, input_ids: torch.Tensor, grid_hw: torch.Tensor | None):
        """``[3, L]`` T, H, W indexes of one token row ``input_ids [L]`` whose images have
        ``grid_hw`` 16-px patches (each image token covers ``1/downsample_ratio`` squared)."""
        is_image = input_ids == self.img_context_token_id
        after_start = torch.zeros_like(input_ids)
        after_start[1:] = (input_ids[:-1] == self.img_start_token_id).long()
        t = (after_start + (~is_image).long()).cumsum(0) - 1
        h, w = torch.zeros_like(t), torch.zeros_like(t)
        if bool(is_image.any()):
            merge = round(1 / self.downsample_ratio)
            rows, cols = grid_positions(grid_hw.to(input_ids.device) // merge)
            if rows.numel() != int(is_image.sum()):
                raise ValueError(
                    f"{int(is_image.sum())} {IMG_CONTEXT} tokens but grid_hw {grid_hw.tolist()} "
                    f"gives {rows.numel()} image tokens"
                )
            h[is_image], w[is_image] = rows.to(t.dtype), cols.to(t.dtype)
        return torch.stack((t, h, w))

    def embed(self, input_ids, pixel_values=None, grid_hw=None, visual_features=None):
        """Token embeddings ``[B, L, hidden]`` with ``<IMG_CONTEXT>`` rows replaced by image tokens."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.img_context_token_id
        if pixel_values is None and visual_features is None:
            if bool(is_image.any()):
                raise ValueError(f"input_ids has {IMG_CONTEXT} tokens but no pixel_values")
            return embeds
        if visual_features is None:
            visual_features = self.vision_model(pixel_values, grid_hw)
        if visual_features.shape[0] != int(is_image.sum()):
            raise ValueError(
                f"{int(is_image.sum())} {IMG_CONTEXT} tokens in input_ids but the images give "
                f"{visual_features.shape[0]} tokens"
            )
        return embeds.masked_scatter(is_image[..., None], visual_features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        grid_hw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        indexes: torch.LongTensor | None = None,
        past_key_values: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits of ``input_ids [B, L]`` with their images (``indexes [3, B, L]`` computed from
        ``input_ids`` and ``grid_hw`` when not given)."""
        if indexes is None:
            indexes = torch.stack([self.get_thw_indexes(row, grid_hw) for row in input_ids], dim=1)
        embeds = self.embed(input_ids, pixel_values, grid_hw)
        if past_key_values is not None:
            kwargs[CACHE_KEY] = past_key_values
        return self.language_model(
            inputs_embeds=embeds, indexes=indexes, attention_mask=attention_mask, **kwargs
        )

    def chat(
        self,
        tokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict,
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        grid_hw: torch.Tensor | None = None,
        IMG_START_TOKEN: str = IMG_START,  # the released keyword names
        IMG_END_TOKEN: str = IMG_END,
        IMG_CONTEXT_TOKEN: str = IMG_CONTEXT,
        verbose: bool = False,
    ):
        """Answer ``question`` (``<image>`` placeholders; one image and none: put in front) after
        ``history`` ``[(question, answer)]``. ``pixel_values`` / ``grid_hw`` hold every image of
        the conversation, history first. Returns the answer (and the extended history)."""
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        history = [] if history is None else list(history)
        query = "".join(
            f"<|im_start|>{role}\n{text}<|im_end|>\n"
            for q, a in history
            for role, text in (("user", q), ("assistant", a))
        )
        if self.system_message:
            query = f"<|im_start|>system\n{self.system_message}<|im_end|>\n" + query
        query += f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        images = 0 if grid_hw is None else grid_hw.shape[0]
        if query.count("<image>") != images:
            raise ValueError(f"{query.count('<image>')} <image> placeholders but {images} images")
        for i in range(images):
            n = int(grid_hw[i, 0] * grid_hw[i, 1] * self.downsample_ratio**2)
            query = query.replace(
                "<image>", IMG_START_TOKEN + IMG_CONTEXT_TOKEN * n + IMG_END_TOKEN, 1
            )
        input_ids = tokenizer(query, return_tensors="pt")["input_ids"].to(self.device)
        config = dict(generation_config)
        config["eos_token_id"] = tokenizer.convert_tokens_to_ids("<|im_end|>")
        output = self.generate(
            pixel_values=pixel_values, input_ids=input_ids, grid_hw=grid_hw, **config
        )
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split("<|im_end|>")[0].strip()
        if verbose:
            print(query.replace(IMG_CONTEXT_TOKEN, ""), response)
        history.append((question, response))
        return (response, history) if return_history else response

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        grid_hw: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        generation_config: GenerationConfig | None = None,
        output_hidden_states: bool | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        """New tokens ``[1, n]`` after the prompt ``input_ids [1, L]`` with its images (HF
        generation: greedy, sampling, ``max_new_tokens``, ``eos_token_id`` ... as keywords).
        ``generation_config`` defaults to the checkpoint's ``generation_config.json``."""
        if input_ids is None or input_ids.shape[0] != 1:
            raise ValueError("generate takes one prompt: input_ids [1, L]")
        indexes = self.get_thw_indexes(input_ids[0], grid_hw)[:, None]
        embeds = self.embed(input_ids, pixel_values, grid_hw, visual_features)
        config = copy.deepcopy(generation_config or self.generation_config or GenerationConfig())
        model_kwargs = config.update(**generate_kwargs)  # what is not a generation parameter
        config.update(use_cache=True)
        if output_hidden_states is not None:
            config.update(output_hidden_states=output_hidden_states)
        return self.language_model.generate(
            inputs_embeds=embeds,
            indexes=indexes,
            attention_mask=attention_mask,
            generation_config=config,
            **model_kwargs,
        )
