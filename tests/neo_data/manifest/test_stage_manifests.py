"""The three stage manifests users start from (``manifests/{pretrain,midtrain,sft}.yaml`` on
``manifests/base.yaml``) validate, chain into each other, and say what the paper says.

Paper numbers are written here from the paper and the architecture doc (section 5 pixel budgets,
section 8 recipe), not read from the schema's stage defaults, so a drift in either shows up.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import pytest
import torch

from neo_data.format.storage import join
from neo_data.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
    resolve_manifest,
)
from neo_data.manifest.recaption import check_policy
from neo_model.config import NeoConfig, neo_2_2b
from neo_model.model import NeoChatModel
from neo_model.train.checkpoint import EXPORT_DIR
from neo_model.train.stages import trainable_names
from tests.helpers import REPO, stage_1_keys

MANIFESTS = REPO / "manifests"
STAGES = ("pretrain", "midtrain", "sft")

# Paper, section 4.1 / appendix A.2 (architecture doc section 8): peak LR, min-LR ratio.
PAPER_LR = {"pretrain": (8e-4, 0.1), "midtrain": (4e-5, 0.2), "sft": (5e-5, 0.1)}
# Architecture doc section 5: 256^2 .. 2048^2 in pre-training, up to 4096^2 later.
PAPER_PIXELS = {
    "pretrain": (65_536, 4_194_304),
    "midtrain": (65_536, 16_777_216),
    "sft": (65_536, 16_777_216),
}
# 16k tokens per pack in pre-training, ~32k in mid-training and SFT.
PAPER_SEQ_LEN = {"pretrain": 16_384, "midtrain": 32_768, "sft": 32_768}
# Section 3.2: the pre-training corpora (LAION-400M en + zh, COYO-700M, BLIP3o, OpenImages
# (recaptioned), LAION-COCO, Wukong) plus text for the 3:7 ratio.
PRETRAIN_SOURCES = {
    "laion-400m-en": "caption",
    "laion-zh": "caption",
    "coyo-700m": "caption",
    "blip3o-long-caption": "caption",
    "openimages": "caption",
    "laion-coco": "caption",
    "wukong": "caption",
    "text": "text",
}
# Qwen3-1.7B's config.json (the fields NEO reads), the stage 1 starting point of NEO-2.2B.
QWEN3_1_7B = {
    "model_type": "qwen3",
    "vocab_size": 151_936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000,
    "max_position_embeddings": 40_960,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
}


def path_of(stage: str) -> Path:
    return MANIFESTS / f"{stage}.yaml"


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    return {stage: load_manifest(path_of(stage)) for stage in STAGES}


@pytest.fixture(scope="module")
def neo_2_2b_meta() -> tuple[NeoChatModel, NeoConfig]:
    """NEO-2.2B as stage 1 builds it from Qwen3-1.7B, on the meta device (no memory)."""
    spec = load_manifest(path_of("pretrain")).train
    config = NeoConfig.from_qwen3(QWEN3_1_7B, spec.init.pre_buffer_layers)
    with torch.device("meta"):
        return NeoChatModel(config), config


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stage_manifest_validates_and_extends_base(stage, manifests):
    m = manifests[stage]
    assert m.stage == stage and m.name == f"neo-{stage}"
    files = resolve_manifest(path_of(stage)).files
    assert [Path(f).resolve() for f in files] == [path_of(stage), MANIFESTS / "base.yaml"]
    for section in ("curate", "train"):
        assert getattr(m, section) is not None, f"{stage}.yaml has no {section}: section"
    # what base.yaml gives every stage: one H100 node, compiled, GPU workers
    assert (m.train.use_gpu, m.train.num_workers, m.train.compile) == (True, 8, True)
    assert m.pack.image_encoding.format == "jpeg"


def test_base_validates_alone():
    """`neo manifest validate manifests/*.yaml` checks base.yaml too."""
    assert load_manifest(MANIFESTS / "base.yaml").name == "neo-base"


@pytest.mark.parametrize("stage", STAGES)
def test_a_typo_in_a_stage_manifest_is_refused_with_its_line(stage):
    text = path_of(stage).read_text()
    assert "\npack:\n" in text
    bad = text.replace("\npack:\n", "\npack:\n  text_ratoi: 0.3\n", 1)
    line = bad.splitlines().index("  text_ratoi: 0.3") + 1
    with pytest.raises(ManifestError, match=rf"{stage}\.yaml:{line}: pack\.text_ratoi: .*unknown"):
        parse_manifest(bad, str(path_of(stage)))


# --- storage: one prefix per stage, each job reads what the previous wrote ----------------------


@pytest.mark.parametrize("stage", STAGES)
def test_stage_storage_under_its_own_prefix(stage, manifests):
    m = manifests[stage]
    prefix = f"s3://YOUR-BUCKET/neo/{stage}/"
    written = [m.curate.output, m.data.packed, m.train.output]
    if m.recaption is not None:
        written.append(m.recaption.output)
    assert all(p.startswith(prefix) for p in written), written
    assert len(set(written)) == len(written)
    assert m.train.data is None  # trains on what this stage packs (data.packed)


@pytest.mark.parametrize("stage", ["midtrain", "sft"])
def test_pack_reads_what_curate_wrote(stage, manifests):
    m = manifests[stage]
    assert m.data.curated == [join(m.curate.output, "samples")]


def test_pretrain_recaptions_openimages_and_packs_the_result(manifests):
    m = manifests["pretrain"]
    assert m.recaption.input == [join(m.curate.output, "samples")]
    assert m.data.curated == [join(m.recaption.output, "samples")]
    assert m.recaption.sources == ["openimages"]  # the paper's recaptioned 5M (section 3.2)
    assert set(m.recaption.sources) <= {s.name for s in m.curate.sources}
    assert m.recaption.policy == "mix" and m.pack.caption_choice == "mix"
    check_policy(m.recaption, m.pack.caption_choice)  # what the recaption job checks
    assert 0.0 < m.pack.recaption_ratio <= 1.0


def test_pretrain_sources_are_the_papers_corpora(manifests):
    sources = manifests["pretrain"].curate.sources
    assert {s.name: s.kind for s in sources} == PRETRAIN_SOURCES
    for s in sources:
        assert all(p.startswith("s3://YOUR-BUCKET/raw/") for p in s.all_paths()), s.name
    # Chinese captions have no spaces: one \w+ run, so a 2-word minimum would drop them all
    curate = manifests["pretrain"].curate
    for name in ("laion-zh", "wukong"):
        source = next(s for s in sources if s.name == name)
        assert curate.source_filters(source).caption_min_words <= 1
        assert curate.source_filters(source).languages == ["zh"]


def test_midtrain_has_the_four_task_groups_and_text(manifests):
    kinds = {s.name: s.kind for s in manifests["midtrain"].curate.sources}
    assert kinds == {
        "captioning": "caption",
        "conversation": "conversation",
        "detection": "conversation",
        "ocr": "conversation",
        "text": "text",
    }


# --- stages chain ---------------------------------------------------------------------------------


def test_stages_chain_through_their_exports(manifests):
    pt, mt, sft = (manifests[s].train for s in STAGES)
    assert pt.init.kind == "qwen3" and pt.init.path.endswith("/Qwen3-1.7B")
    assert pt.init.pre_buffer_layers == 12
    assert (mt.init.kind, mt.init.path) == ("neo", pt.output + "/export")
    assert (sft.init.kind, sft.init.path) == ("neo", mt.output + "/export")
    # "/export" is where the trainer writes (neo_model.train.checkpoint.EXPORT_DIR)
    assert mt.init.path == join(pt.output, EXPORT_DIR)
    assert posixpath.basename(sft.init.path) == EXPORT_DIR


def test_stage_1_starts_neo_2_2b_from_qwen3_1_7b(neo_2_2b_meta):
    _, config = neo_2_2b_meta
    assert config == neo_2_2b()  # 12 pre-Buffer layers in front of Qwen3-1.7B's 28


def test_stage_1_trains_the_stage_set_later_stages_everything(manifests, neo_2_2b_meta):
    """Stage 1 of NEO-2.2B (12 pre-Buffer layers, then Qwen3-1.7B's 28) trains the patch
    embedding, the whole pre-Buffer and the post-LLM's H/W parts; the token embedding, its tied
    head, the final norm and the post-LLM's Qwen3 weights stay frozen. The expectation is
    written out from the architecture doc (sections 1, 7, 8), key by key (tests.helpers)."""
    model, config = neo_2_2b_meta
    expected, frozen = stage_1_keys(pre_buffer=12, post_llm=28)
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert every == expected | frozen  # the doc's checkpoint layout, nothing more
    assert len(expected) == 4 + 12 * 17 + 28 * 6
    pt = manifests["pretrain"].train
    assert pt.trainable == "stage"
    trained = set(trainable_names(model, config, "pretrain", pt.trainable))
    assert trained == expected
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == every - {"language_model.lm_head.weight"}
    for stage in ("midtrain", "sft"):
        spec = manifests[stage].train
        assert spec.trainable == "all"
        assert trainable_names(model, config, stage, spec.trainable) == names


# --- the paper's numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_learning_rate_is_the_papers(stage, manifests):
    spec = manifests[stage].train
    assert spec.lr is None and spec.min_lr_ratio is None  # left to the stage default
    lr, ratio = spec.resolved_lr(stage)
    assert lr == pytest.approx(PAPER_LR[stage][0]) and ratio == pytest.approx(PAPER_LR[stage][1])
    assert (spec.warmup, spec.weight_decay, spec.betas, spec.grad_clip) == (
        0.01,
        0.01,
        (0.9, 0.95),
        1.0,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_seq_len_and_pixel_budgets_are_the_papers(stage, manifests):
    pack = manifests[stage].resolved_pack()
    assert pack.seq_len == PAPER_SEQ_LEN[stage]
    assert (pack.min_pixels, pack.max_pixels) == PAPER_PIXELS[stage]
    # the largest bucket holds exactly the largest image (no bucket that can never fill)
    assert pack.buckets[-1].max_image_tokens == pack.max_pixels // (32 * 32)
    assert pack.max_image_tokens <= pack.seq_len


@pytest.mark.parametrize("stage", ["pretrain", "midtrain"])
def test_text_ratio_is_3_to_7(stage, manifests):
    assert manifests[stage].pack.text_ratio == pytest.approx(0.3)
