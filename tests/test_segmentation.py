"""Per-cell category supervision of the refined map (train.segmentation_weight)."""

from __future__ import annotations

import torch

from regiongpt.training.segmentation import SegmentationHead, segmentation_targets


def test_targets_give_each_cell_the_category_covering_most_of_it():
    masks = torch.zeros(3, 8, 8)
    masks[0, :4, :4] = 1  # image 0, top-left quarter
    masks[1, :4, :] = 1  # image 0, top half: overlaps region 0 in the top-left cell, covering it as much
    masks[1, :4, :2] = 0  # ... but not fully: region 0 covers the top-left cell more
    masks[2, 4:, 4:] = 0.4  # image 1, a soft mask under half: background
    targets = segmentation_targets(masks, torch.tensor([0, 0, 1]), torch.tensor([5, 7, 9]), 2, 2, background=14)
    assert targets.shape == (2, 2, 2)
    assert targets[0].tolist() == [[5, 7], [14, 14]]
    assert (targets[1] == 14).all()
    empty = segmentation_targets(torch.zeros(0, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0), 1, 4, 3)
    assert (empty == 3).all()


def test_head_learns_the_cells_and_skips_unknown_categories():
    torch.manual_seed(0)
    head = SegmentationHead(32, ["circle", "star"])
    region_maps = torch.randn(2, 32, 4, 4)
    masks = torch.zeros(3, 16, 16)
    masks[0, :8, :8] = 1
    masks[1, 8:, 8:] = 1
    masks[2, :8, 8:] = 1
    index = torch.tensor([0, 1, 1])
    categories = ["star", "circle", None]  # the third region has no category: left out of the targets
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    first = head.loss(region_maps, masks, index, categories).item()
    for _ in range(50):
        loss = head.loss(region_maps, masks, index, categories)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 5
    predicted = head(region_maps).argmax(1)
    assert predicted[0, 0, 0] == 1 and predicted[1, 3, 3] == 0 and predicted[1, 0, 3] == 2  # star, circle, background


def test_cover_gives_each_cell_the_share_each_category_covers():
    from regiongpt.training.segmentation import segmentation_cover

    masks = torch.zeros(3, 8, 8)
    masks[0, :2, :2] = 1  # image 0: a small object, a quarter of the top-left cell
    masks[1, :4, 4:] = 1  # image 0: the whole top-right cell
    masks[2, 4:, :4] = 0.5  # image 1: a soft mask, half of the bottom-left cell
    cover = segmentation_cover(masks, torch.tensor([0, 0, 1]), torch.tensor([1, 0, 1]), 2, 2, n_classes=2)
    assert cover.shape == (2, 3, 2, 2)
    assert torch.allclose(cover.sum(1), torch.ones(2, 2, 2))
    assert cover[0, :, 0, 0].tolist() == [0.0, 0.25, 0.75]  # a small object keeps its share: not background
    assert cover[0, :, 0, 1].tolist() == [1.0, 0.0, 0.0]
    assert cover[1, :, 1, 0].tolist() == [0.0, 0.5, 0.5]
    assert cover[1, :, 0, 0].tolist() == [0.0, 0.0, 1.0]
    overlapping = segmentation_cover(torch.ones(2, 4, 4), torch.tensor([0, 0]), torch.tensor([0, 1]), 1, 1, 2)
    assert torch.allclose(overlapping[0, :, 0, 0], torch.tensor([0.5, 0.5, 0.0]))  # clipped to the whole cell


def test_peak_cover_makes_each_regions_most_covered_cell_wholly_its_category():
    from regiongpt.training.segmentation import segmentation_cover

    masks = torch.zeros(2, 8, 8)
    masks[0, :2, :3] = 1  # a small object: 6/16 of the top-left cell, 0 elsewhere
    masks[0, 2:3, 2:5] = 1  # ... and 2/16 of the top-left and 1/16 of the top-right cell
    masks[1, 4:, 4:] = 1  # a large one: the whole bottom-right cell
    plain = segmentation_cover(masks, torch.tensor([0, 0]), torch.tensor([1, 0]), 1, 2, n_classes=2)
    peak = segmentation_cover(masks, torch.tensor([0, 0]), torch.tensor([1, 0]), 1, 2, n_classes=2, peak=True)
    assert plain[0, :, 0, 0].tolist() == [0.0, 0.5, 0.5]
    assert peak[0, :, 0, 0].tolist() == [0.0, 1.0, 0.0]  # its best cell: all of it, no background
    assert peak[0, :, 0, 1].tolist() == [0.0, 0.125, 0.875]  # the other cell: its share over its best share
    assert peak[0, :, 1, 1].tolist() == plain[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]  # large objects unchanged
    assert torch.allclose(peak.sum(1), torch.ones(1, 2, 2))


def test_presence_term_scores_each_categorys_largest_cell_against_what_the_image_shows():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :4] = 1  # image 0 shows a star in its top-left cell; image 1 shows nothing
    index, categories = torch.tensor([0]), ["star"]
    logits = torch.zeros(2, 3, 2, 2)  # classes: circle, star, background
    logits[0, 1, 0, 0] = 4.0  # image 0: sure of the star where it is
    logits[1, 0, 1, 1] = 4.0  # image 1: one confident circle cell, though the image shows none
    plain = SegmentationHead(4, ["circle", "star"])
    with_presence = SegmentationHead(4, ["circle", "star"], presence_weight=2.0)
    maps = torch.zeros(2, 4, 2, 2)
    base = plain.loss(maps, masks, index, categories, logits=logits)
    largest = logits.softmax(1)[:, :2].amax((2, 3))  # (2 images, 2 categories)
    shown = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    expected = base + 2.0 * torch.nn.functional.binary_cross_entropy(largest, shown)
    torch.testing.assert_close(with_presence.loss(maps, masks, index, categories, logits=logits), expected)
    # the wrong "yes" is what the term pushes down: its gradient raises the circle cell's loss
    wrong = logits.clone().requires_grad_(True)
    (with_presence.loss(maps, masks, index, categories, logits=wrong)
     - plain.loss(maps, masks, index, categories, logits=wrong)).backward()
    assert wrong.grad[1, 0, 1, 1] > 0


def test_object_balance_weights_raise_small_objects_cells_to_the_reference_area():
    from regiongpt.training.segmentation import object_balance_weights

    masks = torch.zeros(3, 8, 8)
    masks[0, :4, :4] = 1  # image 0: 4 whole cells of a 4x4 map (cells of 2x2 pixels)
    masks[1, 4:8, 4:6] = 1  # image 0: two whole cells (a 4x2-pixel object)
    masks[2, :, :] = 1  # image 1: the whole map, 16 cells, larger than the reference
    weights = object_balance_weights(masks, torch.tensor([0, 0, 1]), 2, 4, object_cells=8.0)
    assert weights.shape == (2, 4, 4)
    assert torch.allclose(weights[0, :2, :2], torch.full((2, 2), 2.0))  # 4 cells weigh 8: 1 + (8/4 - 1) each
    assert torch.allclose(weights[0, 2:, 2], torch.full((2,), 4.0))  # 2 cells weigh 8: 1 + (8/2 - 1) each
    assert weights[0, 0, 3] == 1.0 and weights[0, 3, 0] == 1.0  # background keeps 1
    assert torch.equal(weights[1], torch.ones(4, 4))  # a large object keeps 1
    soft = torch.zeros(1, 8, 8)
    soft[0, :1, :1] = 1  # a quarter of one cell: 0.25 cells in all, its cell gets 1 + 0.25 * (8 / 0.25 - 1)
    assert torch.isclose(object_balance_weights(soft, torch.tensor([0]), 1, 4, 8.0)[0, 0, 0], torch.tensor(8.75))
    # together, a small object's cells weigh (share-weighted) as much as the reference area
    small = object_balance_weights(masks[1:2], torch.tensor([0]), 1, 4, 8.0)
    assert torch.isclose(((small - 1) * torch.nn.functional.adaptive_avg_pool2d(masks[1:2, None], 4)[:, 0]).sum()
                         + 2.0, torch.tensor(8.0))


def test_object_balanced_loss_weighs_a_small_objects_cells_up_and_leaves_the_rest():
    masks = torch.zeros(2, 8, 8)
    masks[0, :2, :2] = 1  # a small star: one cell of a 4x4 map
    masks[1, 4:, :] = 1  # a large circle: 8 cells
    index, categories = torch.tensor([0, 0]), ["star", "circle"]
    maps = torch.zeros(1, 4, 4, 4)
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    plain = SegmentationHead(4, ["circle", "star"])
    balanced = SegmentationHead(4, ["circle", "star"], object_cells=4.0)
    # a reference below every region's area changes nothing
    torch.testing.assert_close(SegmentationHead(4, ["circle", "star"], object_cells=1.0).loss(
        maps, masks, index, categories, logits=logits), plain.loss(maps, masks, index, categories, logits=logits))
    grads = []
    for head in (plain, balanced):
        x = logits.clone().requires_grad_(True)
        head.loss(maps, masks, index, categories, logits=x).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1][0, :, 0, 0], 4.0 * grads[0][0, :, 0, 0])  # the star's cell: 1 + (4/1 - 1)
    torch.testing.assert_close(grads[1][0, :, 3, 3], grads[0][0, :, 3, 3])  # the circle's cells as before
    torch.testing.assert_close(grads[1][0, :, 0, 3], grads[0][0, :, 0, 3])  # background as before
    with __import__("pytest").raises(Exception, match="segmentation_object_cells"):
        SegmentationHead(4, ["circle"], object_cells=-1.0)
