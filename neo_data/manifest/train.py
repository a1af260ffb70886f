"""The ``train:`` section of a manifest: one NEO training stage on Ray Train.

Defaults follow the paper (architecture doc, section 8): AdamW (0.9, 0.95), weight decay 0.01,
gradient clip 1.0, 1% warm-up, cosine to a minimum-LR ratio, and per stage the peak learning rate
and minimum ratio of the paper (pre-training 8e-4 / 0.1, mid-training 4e-5 / 0.2, SFT 5e-5 / 0.1).
Stage 1 trains the patch embedding, the pre-Buffer and the post-LLM's H/W query/key parts; stages
2 and 3 train everything (``neo_model.train.stages``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from neo_data.manifest.base import Strict

# (peak learning rate, minimum-LR ratio) by stage: the paper's values.
STAGE_LR: dict[str, tuple[float, float]] = {
    "pretrain": (8e-4, 0.1),
    "midtrain": (4e-5, 0.2),
    "sft": (5e-5, 0.1),
}


# RoPE bases a from-Qwen3 initialisation gets unless train.init sets them: the released training's
# defaults, VLMTrainKit/neo/train/argument.py (github.com/EvolvingLMMs-Lab/NEO, commit 78faae9),
# ModelArguments: rope_theta_hw = 10000.0 (the H/W axes of the post-LLM's 3D RoPE) and
# rope_theta_vision = 1000.0 (the patch embedding's 2D RoPE; the config class's own default,
# and a random preset's, is 10,000). The T axis keeps the Qwen3 checkpoint's rope_theta.
QWEN3_INIT_ROPE = {"rope_theta_hw": 10_000.0, "rope_theta_vision": 1_000.0}

PositiveTheta = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class InitSpec(Strict):
    """Where the weights of a stage start.

    * ``qwen3``: a HF Qwen3 checkpoint directory (stage 1): the post-LLM is Qwen3, the
      pre-Buffer (``pre_buffer_layers``) and the H/W parts are initialised by the doc's rules.
    * ``neo``: a NEO checkpoint in the released layout (stage 2 from stage 1's export, ...).
    * ``random``: a preset (``debug``, ``neo_2_2b``, ``neo_9b``) with random weights, for tests
      and benchmarks.

    ``rope_theta_vision`` (the patch embedding's 2D RoPE base) and ``rope_theta_hw`` (the H/W
    axes' base) are part of the model a stage creates: ``qwen3`` defaults to the released
    training's values (:data:`QWEN3_INIT_ROPE`), ``random`` to the preset's; a ``neo``
    checkpoint keeps the ones it was trained with (its ``config.json``), so setting them there is
    refused. The export's ``config.json`` records them.
    """

    kind: Literal["qwen3", "neo", "random"]
    path: str | None = None  # local path or s3:// (qwen3, neo)
    pre_buffer_layers: Annotated[int, Field(ge=0)] = 12  # qwen3 only
    preset: Literal["debug", "neo_2_2b", "neo_9b"] = "debug"  # random only
    rope_theta_vision: PositiveTheta | None = None  # qwen3, random
    rope_theta_hw: PositiveTheta | None = None  # qwen3, random

    @model_validator(mode="after")
    def _path_needed(self) -> InitSpec:
        if self.kind in ("qwen3", "neo") and not self.path:
            raise ValueError(f"init.kind {self.kind!r} needs init.path (a checkpoint directory)")
        if self.kind == "neo":
            for name in QWEN3_INIT_ROPE:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"init.{name}: a neo checkpoint keeps the RoPE base it was trained with "
                        f"(its config.json); remove init.{name}"
                    )
        return self

    def rope_overrides(self) -> dict[str, float]:
        """The RoPE bases this init sets on the stage's config (``{}``: the checkpoint's or
        preset's own)."""
        if self.kind == "neo":
            return {}
        defaults = QWEN3_INIT_ROPE if self.kind == "qwen3" else {}
        chosen = {k: getattr(self, k) for k in QWEN3_INIT_ROPE if getattr(self, k) is not None}
        return {**defaults, **chosen}


class MixtureEntry(Strict):
    """One packed dataset of a stage's mixture and its share of the packs trained on."""

    path: str  # a packed dataset (local path or s3://)
    weight: Annotated[float, Field(gt=0)]  # relative; normalised over the list


class ParallelSpec(Strict):
    """How the ranks hold the model (FSDP2). Unset: every rank holds a shard of every layer
    (one flat mesh). Hybrid sharding (HSDP) shards within groups of ``shard_size`` ranks (one
    node: its fast links carry the all-gathers and reduce-scatters) and replicates across
    ``replicate`` such groups (only a gradient all-reduce crosses nodes). Give either or both:
    ``shard_size x replicate`` must equal the run's world size (checked when it starts)."""

    shard_size: Annotated[int | None, Field(gt=0)] = None  # ranks one copy is sharded over
    replicate: Annotated[int | None, Field(gt=0)] = None  # copies of the sharded model

    @property
    def hybrid(self) -> bool:
        return self.shard_size is not None or self.replicate is not None


class TrainSpec(Strict):
    init: InitSpec
    # the packed dataset (default: the manifest's data.packed), or a mixture of several:
    # [{path: ..., weight: 0.7}, {path: ..., weight: 0.3}] -- packs blended by weight, the
    # order still seeded and resumable (neo_data.loader.BlendOrder)
    data: str | Annotated[list[MixtureEntry], Field(min_length=1)] | None = None
    output: str  # the run's storage: checkpoints/ and export/ (local path or s3://)
    steps: Annotated[int, Field(gt=0)]
    packs_per_step: Annotated[int, Field(gt=0)] = 1  # per rank (gradient accumulation)
    trainable: Literal["stage", "all"] = "stage"  # "stage": the stage's set (stage 1 partial)
    # the paper's Table 3 ablations (neo_model.config); None: the init checkpoint's choice
    # (native + mixed for a Qwen3 or random start). The export records what was trained.
    rope: Literal["native", "1d"] | None = None
    attention: Literal["mixed", "causal"] | None = None
    lr: Annotated[float | None, Field(gt=0)] = None  # default: the paper's, by stage
    min_lr_ratio: Annotated[float | None, Field(ge=0, le=1)] = None
    # the patch embedding's LR is lr x this (the only weights a language-model start lacks
    # entirely; LLaVA-style recipes give the new vision parts their own LR)
    vision_lr_scale: Annotated[float, Field(gt=0)] = 1.0
    warmup: Annotated[float, Field(ge=0, lt=1)] = 0.01  # fraction of steps
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    loss_weighting: Literal["token", "sample_sqrt"] = "token"
    seed: int = 0
    # parallelism and speed
    num_workers: Annotated[int, Field(gt=0)] = 1
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    # activation checkpointing of the decoder layers (neo_model.train.parallelize):
    # full: keep each layer's input, recompute the layer in the backward pass (least memory);
    # selective: keep the outputs of the matmuls and of attention, recompute the rest (norms,
    # RoPE, SiLU, elementwise: cheap); none. true / false mean full / none.
    activation_checkpointing: Literal["none", "full", "selective"] = "full"
    parallel: ParallelSpec = ParallelSpec()
    compile: bool = False  # torch.compile each layer (CUDA)
    pad_to_multiple: Annotated[int, Field(gt=0)] = 128  # on CUDA: fixed shapes for compile
    # checkpoints and metrics
    checkpoint_every: Annotated[int, Field(gt=0)] = 100  # steps
    keep_checkpoints: Annotated[int, Field(gt=0)] = 3
    max_failures: Annotated[int, Field(ge=0)] = (
        3  # worker-group restarts from the latest checkpoint
    )
    log_every: Annotated[int, Field(gt=0)] = 10
    peak_tflops: Annotated[float, Field(gt=0)] = 989.0  # per device, for MFU (H100 bf16 dense)

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_bool(cls, value: object) -> object:
        if isinstance(value, bool):  # the older spelling
            return "full" if value else "none"
        return value

    @model_validator(mode="after")
    def _distinct_mixture(self) -> TrainSpec:
        if isinstance(self.data, list):
            paths = [e.path.rstrip("/") for e in self.data]
            twice = sorted({p for p in paths if paths.count(p) > 1})
            if twice:
                raise ValueError(f"data: {twice[0]!r} is listed twice (give it one weight)")
        return self

    def sources(self, default: str) -> list[tuple[str, float]]:
        """``[(packed dataset URL, weight)]``: ``data`` (one dataset or a mixture) else
        ``default`` (the manifest's ``data.packed``)."""
        if isinstance(self.data, list):
            return [(e.path, e.weight) for e in self.data]
        return [(self.data or default, 1.0)]

    def resolved_lr(self, stage: str) -> tuple[float, float]:
        """(peak learning rate, minimum-LR ratio) with the stage's defaults filled in."""
        lr, ratio = STAGE_LR[stage]
        return (self.lr or lr, ratio if self.min_lr_ratio is None else self.min_lr_ratio)
