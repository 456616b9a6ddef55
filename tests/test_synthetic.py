"""The synthetic whole-slide image: tissue where its mask says, nuclei only there, glass empty."""
import numpy as np
from skimage.measure import regionprops

from bigseg.synthetic import _apart, slide, tissue_mask


def test_slide_covers_the_tissue_fraction_with_nuclei_only_inside_it():
    shape = (1536, 2048)
    image, truth = slide(shape, tissue=0.3, seed=4)
    mask = tissue_mask(shape, tissue=0.3, seed=4)
    assert image.shape == truth.shape == shape and image.dtype == np.uint16
    assert abs(mask.mean() - 0.3) < 0.01
    assert not truth[~mask].any()  # no nucleus pixel on glass
    props = regionprops(truth)
    unit = np.pi * 5.5**2  # mean radius (4 + 7) / 2
    assert abs(sum(p.area for p in props) / mask.sum() - 0.15) < 0.03  # nuclei fill ~15% of the tissue
    assert len(props) == truth.max() > 0.8 * 0.15 * mask.sum() / unit  # labels 1..n, each a nucleus
    assert np.median([p.area for p in props]) > 0.7 * unit
    glass = image[~mask].astype(float)
    assert abs(glass.mean() - 200) < 2 and abs(glass.std() - 40) < 2  # background noise only
    assert image[truth > 0].mean() > 800


def test_slide_is_reproducible():
    a, b = slide((512, 512), seed=1), slide((512, 512), seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], slide((512, 512), seed=2)[0])


def test_apart_drops_the_later_of_each_too_close_pair_as_a_greedy_scan_does():
    rng = np.random.default_rng(0)
    centres, radii = rng.uniform(0, 60, (300, 2)), rng.uniform(2, 5, 300)
    expected = np.ones(300, bool)  # brute force: every pair, in index order
    for i in range(300):
        for j in range(i + 1, 300):
            if expected[i] and expected[j] and np.hypot(*(centres[i] - centres[j])) < 0.85 * (radii[i] + radii[j]):
                expected[j] = False
    assert np.array_equal(_apart(centres, radii, 5, 0.85), expected) and 0 < expected.sum() < 300
