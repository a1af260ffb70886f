"""The demo's stage manifests: paths moved under --out, steps, and --image-size reaching the pack."""

from pipelines.demo import stage_manifests


def test_image_size_sets_every_stage_pixel_budget_and_paths_move(tmp_path):
    root = str(tmp_path / "run")
    stages = stage_manifests(root, None, 0.5, 192)
    assert [m.stage for m in stages] == ["pretrain", "midtrain", "sft"]
    for m in stages:
        pack = m.resolved_pack()
        assert (pack.min_pixels, pack.max_pixels) == (192 * 192, 192 * 192)
        assert m.data.packed.startswith(root + "/packed/")
        assert m.train.output.startswith(root + "/train/")
        assert m.train.checkpoint_every == m.train.steps


def test_without_image_size_the_manifests_budget_stays():
    default = stage_manifests("runs/demo", 7, 1.0)
    assert all(m.train.steps == 7 for m in default)
    assert {(m.resolved_pack().min_pixels, m.resolved_pack().max_pixels) for m in default} == {
        (96 * 96, 96 * 96)
    }
