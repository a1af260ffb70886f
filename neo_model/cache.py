"""The KV cache of generation: per layer keys and values, plus what NEO's mask needs of the
cached tokens (their sample ids and image ordinals)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Per layer: keys ``[B, kv_heads, S, 2 * head_dim]`` (T | H | W, after RoPE) and values
    ``[B, kv_heads, S, head_dim]``; plus the sample ids and image ordinals ``[B, S]`` of the ``S``
    cached tokens, which the mask of later queries needs."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    sample_ids: torch.Tensor | None = None
    image_ordinal: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.sample_ids is None else self.sample_ids.shape[1]

    def update(
        self, layer_idx: int, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's ``key`` / ``value`` for ``layer_idx``; return all cached so far."""
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key), dim=2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value), dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def extend_tokens(
        self, sample_ids: torch.Tensor, image_ordinal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' ids and ordinals; return those of all cached tokens."""
        if self.sample_ids is not None and self.image_ordinal is not None:
            sample_ids = torch.cat((self.sample_ids, sample_ids), dim=1)
            image_ordinal = torch.cat((self.image_ordinal, image_ordinal), dim=1)
        self.sample_ids, self.image_ordinal = sample_ids, image_ordinal
        return sample_ids, image_ordinal
