import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neo_data.encoding.positions import ImageTokenMismatch, next_t, thw_indices
from neo_data.encoding.tokens import IMG_CONTEXT_ID, IMG_END_ID, IMG_START_ID, image_token_ids

IM_START, USER, NL = 151644, 872, 198


def test_worked_example_of_the_architecture_doc():
    # <|im_start|> user \n <img> I I I I </img> \n with a 2x2 image
    ids = [IM_START, USER, NL, *image_token_ids(2, 2), NL]
    t, h, w, o = thw_indices(ids, [(2, 2)])
    assert t.tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 5, 6]
    assert list(zip(h[4:8].tolist(), w[4:8].tolist(), strict=True)) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert (h[[0, 1, 2, 3, 8, 9]] == 0).all() and (w[[0, 1, 2, 3, 8, 9]] == 0).all()
    assert o.tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, -1, -1]


segments = st.lists(
    st.one_of(
        st.lists(st.integers(0, 151000), min_size=1, max_size=6).map(lambda x: ("text", x)),
        st.tuples(st.integers(1, 5), st.integers(1, 5)).map(lambda g: ("image", g)),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(segments, st.integers(0, 50))
def test_rule_holds_for_any_mix_of_text_and_images(segs, t_start):
    ids, grids = [], []
    for kind, val in segs:
        if kind == "text":
            ids.extend(val)
        else:
            grids.append(val)
            ids.extend(image_token_ids(*val))
    t, h, w, o = thw_indices(ids, grids, t_start=t_start)
    ids = np.asarray(ids)
    is_img = ids == IMG_CONTEXT_ID
    # Non-image tokens: T advances by exactly one each step, except right after an image,
    # where the image itself costs one step.
    if len(ids):
        assert t[0] == t_start
        steps = np.diff(t)
        assert set(steps.tolist()) <= {0, 1}
        assert (steps[~is_img[1:]] == 1).all()
        # one T for the whole of an image, = T(<img>) + 1; </img> one more
        for k, (rows, cols) in enumerate(grids):
            where = np.flatnonzero(o == k)
            assert len(where) == rows * cols
            assert len(set(t[where].tolist())) == 1
            assert ids[where[0] - 1] == IMG_START_ID and t[where[0]] == t[where[0] - 1] + 1
            assert ids[where[-1] + 1] == IMG_END_ID and t[where[-1] + 1] == t[where[0]] + 1
            assert h[where].tolist() == [r for r in range(rows) for _ in range(cols)]
            assert w[where].tolist() == [c for _ in range(rows) for c in range(cols)]
        assert (h[~is_img] == 0).all() and (w[~is_img] == 0).all()
        assert (o[~is_img] == -1).all()
        # T is contiguous: every value from t_start to the max is used
        assert sorted(set(t.tolist())) == list(range(t_start, int(t.max()) + 1))
        assert next_t(t) == int(t.max()) + 1


def test_next_t_of_empty_prefix_is_zero():
    assert next_t([]) == 0


def test_mismatched_grids_raise():
    ids = [1, *image_token_ids(2, 2), 2]
    with pytest.raises(ImageTokenMismatch, match="4 <IMG_CONTEXT> tokens but its grid is 2x3"):
        thw_indices(ids, [(2, 3)])
    with pytest.raises(ImageTokenMismatch, match="1 <IMG_CONTEXT> runs .* 2 image grids"):
        thw_indices(ids, [(2, 2), (1, 1)])
