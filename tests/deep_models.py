"""Small real models, trained in seconds on synthetic nuclei and saved to disk, for the deep-method tests."""
from __future__ import annotations

import os

import numpy as np

from bigseg.synthetic import nuclei


def normalised(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, (1, 99.8))
    return (x - lo) / (hi - lo)


def train_stardist(basedir: str, ndim: int) -> str:
    """A tiny StarDist model (2 U-Net levels, 16 rays in 2D / 32 in 3D), saved under ``basedir``."""
    import keras
    from stardist import Rays_GoldenSpiral
    from stardist.models import Config2D, Config3D, StarDist2D, StarDist3D
    keras.utils.set_random_seed(0)
    shape = (128, 128) if ndim == 2 else (32, 64, 64)
    data = [nuclei(shape, seed=100 + s, radius=(4, 7), overlap=1.0) for s in range(8 if ndim == 2 else 6)]
    X, Y = [normalised(img) for img, _ in data], [lab for _, lab in data]
    common = dict(n_channel_in=1, unet_n_depth=2, unet_n_filter_base=16, train_batch_size=4,
                  train_tensorboard=False)
    if ndim == 2:
        conf = Config2D(n_rays=16, grid=(2, 2), train_patch_size=(64, 64), **common)
        model = StarDist2D(conf, name="tiny2d", basedir=basedir)
        epochs, steps = 15, 20
    else:
        conf = Config3D(rays=Rays_GoldenSpiral(32, anisotropy=(1, 1, 1)), grid=(1, 2, 2),
                        train_patch_size=(16, 48, 48), **common)
        model = StarDist3D(conf, name="tiny3d", basedir=basedir)
        epochs, steps = 20, 20
    model.train(X, Y, validation_data=(X[:2], Y[:2]), epochs=epochs, steps_per_epoch=steps)
    # NMS 0.3: what the search picked from its default 0.3, 0.4, 0.5 (the same model, a third of the search)
    model.optimize_thresholds(X[:2], Y[:2], nms_threshs=[0.3])
    return os.path.join(basedir, model.name)


def train_cellpose(save_path: str, epochs: int = 30) -> str:
    """A Cellpose model trained from scratch on 64x64 crops (cellpose 3 API; cellpose 4 cannot train from
    scratch); about a minute on 2 CPU cores."""
    import torch
    from cellpose import models, train
    torch.manual_seed(0)
    np.random.seed(0)
    data = [nuclei((128, 128), seed=200 + s, radius=(5, 8), overlap=1.0) for s in range(16)]
    X, Y = [normalised(img) for img, _ in data], [lab for _, lab in data]
    model = models.CellposeModel(gpu=False, pretrained_model=False, nchan=2, diam_mean=13.0)
    os.makedirs(save_path, exist_ok=True)
    out = train.train_seg(model.net, train_data=X, train_labels=Y, channels=[0, 0], normalize=False,
                          n_epochs=epochs, learning_rate=0.01, weight_decay=1e-5, batch_size=8, save_path=save_path,
                          model_name="tiny_cellpose", min_train_masks=1, nimg_per_epoch=16, bsize=64, rescale=False)
    return str(out[0] if isinstance(out, tuple) else out)


def train_pixel_classifier(path: str, ndim: int = 2) -> str:
    """A random forest from 400 foreground and 400 background scribble pixels of a synthetic image."""
    from bigseg.methods.pixel_classifier import train
    image, truth = nuclei((192, 192) if ndim == 2 else (24, 96, 96), seed=300, radius=(5, 8))
    scribbles = np.zeros(truth.shape, np.uint8)
    rng = np.random.default_rng(0)
    fg, bg = np.argwhere(truth > 0), np.argwhere(truth == 0)
    for coords, cls in ((fg, 2), (bg, 1)):
        pick = coords[rng.choice(len(coords), 400, replace=False)]
        scribbles[tuple(pick.T)] = cls
    return train(image, scribbles, path, foreground=2, sigma_max=4.0, n_estimators=30)
