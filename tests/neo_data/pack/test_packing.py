import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neo_data.encoding.positions import thw_indices
from neo_data.encoding.tokens import IGNORE_INDEX, load_tokenizer, render_text, render_turns
from neo_data.pack.packing import build_pack, choose_groups
from neo_data.synthetic.lengths import realistic_mix


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(0, 200)), max_size=120),
    st.integers(300, 1000),
    st.integers(200, 800),
    st.integers(0, 3),
)
def test_every_item_in_exactly_one_group_within_both_budgets(items, seq_len, img_budget, seed):
    tokens = [t for t, _ in items]
    images = [min(i, t) for t, i in items]
    groups = choose_groups(tokens, images, seq_len, img_budget, seed=seed)
    flat = sorted(i for g in groups for i in g)
    assert flat == list(range(len(items)))  # none lost, none duplicated, none split
    for g in groups:
        assert g and sum(tokens[i] for i in g) <= seq_len
        assert sum(images[i] for i in g) <= img_budget


def groups_of(tokens, image_tokens, seq_len, max_image_tokens, seed=0) -> list[list[int]]:
    """The groups as sorted lists in a sorted list (the pack order is a seeded shuffle)."""
    got = choose_groups(tokens, image_tokens, seq_len, max_image_tokens, seed=seed)
    return sorted(sorted(g) for g in got)


def test_a_pack_holds_exactly_seq_len_tokens_and_never_one_more():
    # worked examples, seq_len 10: 6 + 4 = 10 fits one pack; 6 + 5 = 11 does not
    assert groups_of([6, 4], [0, 0], 10, 100) == [[0, 1]]
    assert groups_of([6, 5], [0, 0], 10, 100) == [[0], [1]]
    assert groups_of([10], [0], 10, 100) == [[0]]  # one sample of exactly the budget
    # first fit decreasing: 7 opens pack 0, 5 opens pack 1, 3 fills pack 0 to exactly 10
    assert groups_of([7, 5, 3], [0, 0, 0], 10, 100) == [[0, 2], [1]]
    # 7 + 4 = 11 > 10: the 4 joins the 5
    assert groups_of([7, 5, 4], [0, 0, 0], 10, 100) == [[0], [1, 2]]
    for seed in range(4):
        groups = choose_groups([5, 5, 5, 5, 1], [0] * 5, 10, 100, seed=seed)
        assert sorted(len(g) for g in groups) == [1, 2, 2]  # 5 + 5, 5 + 5, 1: never 5 + 5 + 1
    with pytest.raises(ValueError, match="larger than the pack budget"):
        choose_groups([11], [0], 10, 100)


def test_a_pack_holds_exactly_its_image_token_budget_and_never_one_more():
    # tokens far below seq_len: only the image budget (5) cuts
    assert groups_of([4, 3], [3, 2], 100, 5) == [[0, 1]]  # 3 + 2 = 5 image tokens
    assert groups_of([4, 3], [3, 3], 100, 5) == [[0], [1]]  # 3 + 3 = 6
    assert groups_of([9], [5], 100, 5) == [[0]]
    # longest first: 9 (3 img) opens pack 0, 8 (3 img) cannot join (6 > 5), 7 (2 img) can
    assert groups_of([9, 8, 7], [3, 3, 2], 100, 5) == [[0, 2], [1]]
    # text-only items (0 image tokens) still fill a pack whose image budget is spent
    assert groups_of([9, 8, 7], [5, 0, 0], 100, 5) == [[0, 1, 2]]
    with pytest.raises(ValueError, match="larger than the pack budget"):
        choose_groups([4], [6], 100, 5)
    # both budgets at once: tokens 6 + 4 = 10 fit, but 3 + 3 image tokens do not
    assert groups_of([6, 4], [3, 3], 10, 5) == [[0], [1]]
    assert groups_of([6, 4], [3, 2], 10, 5) == [[0, 1]]


def test_grouping_is_deterministic_for_a_seed():
    tok, img = realistic_mix(3000, seed=1)
    a = choose_groups(tok, img, 16384, 16384, seed=5)
    assert a == choose_groups(tok, img, 16384, 16384, seed=5)
    assert a != choose_groups(tok, img, 16384, 16384, seed=6)


def test_fill_on_a_realistic_mix_is_at_least_99_5_percent():
    # captions 5-200 words, images 256^2..2048^2, 30 % text-only; 16k packs (pre-training)
    tok, img = realistic_mix(20000, seed=0)
    for img_budget in (16384, 12288):
        groups = choose_groups(tok, img, 16384, img_budget, seed=0)
        fill = tok.sum() / (len(groups) * 16384)
        assert fill >= 0.995, (img_budget, fill)


def test_items_larger_than_the_budget_are_refused():
    with pytest.raises(ValueError, match="larger than the pack budget"):
        choose_groups([10, 20], [0, 0], 15, 15)


@pytest.fixture(scope="module")
def samples():
    tok = load_tokenizer()
    out = []
    for k, (turns, grids) in enumerate(
        [
            ([("user", "<image>"), ("assistant", "A red square.")], [(2, 3)]),
            (None, []),
            ([("user", "<image> and <image>?"), ("assistant", "Two.")], [(1, 1), (2, 2)]),
        ]
    ):
        r = (
            render_text(tok, "Plain text document.")
            if turns is None
            else render_turns(tok, turns, grids)
        )
        t, h, w, o = thw_indices(r.input_ids, grids)
        out.append(
            {
                "sample_id": f"s{k}", "source": "t", "text_only": turns is None,
                "input_ids": r.input_ids, "labels": r.labels(), "t_index": t, "h_index": h, "w_index": w,
                "image_ordinal": o, "images": [b"img%d" % j for j in range(len(grids))],
                "image_heights": [g[0] * 32 for g in grids], "image_widths": [g[1] * 32 for g in grids],
            }
        )  # fmt: skip
    return out


def test_a_pack_keeps_samples_whole_and_separate(samples):
    pack = build_pack("low-000000-0000", "low", samples)
    cu = pack["cu_seqlens"]
    assert cu.tolist() == [0, *np.cumsum([len(s["input_ids"]) for s in samples]).tolist()]
    assert pack["num_tokens"] == cu[-1] == len(pack["input_ids"])
    for k, s in enumerate(samples):
        seg = slice(cu[k], cu[k + 1])
        assert pack["input_ids"][seg].tolist() == s["input_ids"].tolist()
        assert pack["t_index"][cu[k]] == 0  # T restarts for every packed sample
        # no supervised label predicts across a sample boundary
        assert pack["labels"][cu[k + 1] - 1] == IGNORE_INDEX
    # image ordinals index the pack's image list, in order
    o = pack["image_ordinal"]
    assert pack["images"] == [b"img0", b"img0", b"img1"]
    assert sorted(set(o[o >= 0].tolist())) == [0, 1, 2]
    for j in range(3):
        n = (o == j).sum()
        assert n == (pack["image_heights"][j] // 32) * (pack["image_widths"][j] // 32)
    assert pack["num_supervised"] == int((pack["labels"] != IGNORE_INDEX).sum())
    assert pack["sample_text_only"] == [False, True, False]
