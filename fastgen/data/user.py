"""Your own data behind the same interface.

`folder`: a folder of images (.png .jpg .jpeg .bmp .gif .tif .tiff .webp), read with
matplotlib.image.imread (Pillow underneath). Images directly in the folder all get label 0;
or put them in class subfolders (searched recursively) and the labels are the subfolder names
in sorted order. Each image is composited over white if it has alpha, made grey (luma) or RGB
(`channels`), centre-cropped to a square and resized to `size` x `size` (bilinear, antialiased).

`npz`: an .npz file (numpy.savez) with an array `x` of shape (N, ...) and an optional integer
array `y` ((N,), or (N, T) for sequences). The kind is guessed unless given (`kind=`):
(N, C, H, W) or (N, H, W, C) with C in {1, 3} or (N, H, W) -> image; (N, T, F) with y (N, T) ->
sequence; (N, 2) -> points2d; (N, D) all 0/1 -> binary; other (N, D) -> "vector". uint8
images are scaled by 1/255; everything else is taken as is (float32).

Both load everything once; make() holds out a fixed `test_fraction` of the items as the test
split (the same for every seed), and stream() samples from the rest.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from .base import _REQUIRED, DatasetBuilder, check_choice, check_float, check_int, register

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _is_image(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(folder):
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    return found


def scan_folder(path):
    """(files, labels, class_names) of an image folder; ValueError when it holds no images."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset 'folder': no such folder: {path}")
    if not os.path.isdir(path):
        raise ValueError(f"dataset 'folder': {path} is not a folder (for an .npz file use dataset 'npz')")
    entries = sorted(os.listdir(path))
    top = [os.path.join(path, e) for e in entries if _is_image(e) and os.path.isfile(os.path.join(path, e))]
    subdirs = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(path, e))]
    per_class = {d: _images_under(os.path.join(path, d)) for d in subdirs}
    classes = [d for d in subdirs if per_class[d]]
    if classes and top:
        raise ValueError(f"dataset 'folder': {path} has images both at its top level (e.g. "
                         f"{os.path.basename(top[0])}) and in class subfolders ({', '.join(classes)}); "
                         f"put every image in a class subfolder, or none in subfolders")
    if classes:
        files, labels = [], []
        for k, d in enumerate(classes):
            files += per_class[d]
            labels += [k] * len(per_class[d])
        return files, labels, classes
    if not top:
        raise ValueError(f"dataset 'folder': no images ({', '.join(IMAGE_EXTENSIONS)}) found in {path}")
    return top, [0] * len(top), ["all"]


def read_image(file, size, channels):
    """One image file -> float32 [channels, size, size] in [0, 1]."""
    import matplotlib.image

    try:
        a = np.asarray(matplotlib.image.imread(file))
    except Exception as exc:
        raise ValueError(f"dataset 'folder': cannot read image {file} ({exc})") from exc
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == np.uint16:
        a = a.astype(np.float32) / 65535
    a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"dataset 'folder': {file} has an unsupported image shape {tuple(a.shape)}")
    if a.shape[2] in (2, 4):  # alpha: composite over white
        alpha = a[:, :, -1:]
        a = a[:, :, :-1] * alpha + (1 - alpha)
    if channels == 1 and a.shape[2] == 3:
        a = (a * torch.tensor([0.299, 0.587, 0.114])).sum(2, keepdim=True)
    elif channels == 3 and a.shape[2] == 1:
        a = a.expand(-1, -1, 3)
    img = a.permute(2, 0, 1)
    h, w = img.shape[1:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[:, top:top + side, left:left + side]
    if side != size:
        img = F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False,
                            antialias=side > size)[0]
    return img.clamp(0, 1).contiguous()


def load_folder(opts):
    files, labels, classes = scan_folder(opts["path"])
    x = torch.stack([read_image(f, opts["size"], opts["channels"]) for f in files])
    return {"x": x, "y": torch.tensor(labels, dtype=torch.int64), "kind": "image",
            "num_classes": len(classes), "class_names": classes}


def _check_folder(opts):
    check_int(opts, "size", 1, 4096, "folder")
    check_choice(opts, "channels", (1, 3), "folder")
    check_float(opts, "test_fraction", 0.0, 1.0, "folder", hi_open=True)


NPZ_KINDS = (None, "points2d", "image", "binary", "sequence", "vector")


def load_npz(opts):
    path = opts["path"]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset 'npz': no such file: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"dataset 'npz': cannot read {path} as an .npz file ({exc})") from exc
    if not hasattr(archive, "files"):
        raise ValueError(f"dataset 'npz': {path} holds one array, not an .npz archive; "
                         f"save it with numpy.savez(path, x=..., y=...)")
    with archive:
        names = list(archive.files)
        if "x" not in names:
            raise ValueError(f"dataset 'npz': {path} has no array 'x'; its arrays: "
                             f"{', '.join(names) if names else '(none)'}")
        x = archive["x"]
        y = archive["y"] if "y" in names else None
    return _from_arrays(path, x, y, opts["kind"])


def _from_arrays(path, x, y, kind):
    where = f"dataset 'npz' ({path})"
    if x.ndim < 2:
        raise ValueError(f"{where}: x must be (N, ...) with at least 2 dims, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{where}: x must be numeric, got dtype {x.dtype}")
    n = x.shape[0]
    if y is not None:
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
                raise ValueError(f"{where}: y must hold integer labels, got dtype {y.dtype}")
        if y.shape[0] != n or y.ndim not in (1, 2):
            raise ValueError(f"{where}: y must be (N,) or (N, T) with N = {n}, got shape {y.shape}")
        if y.size and y.min() < 0:
            raise ValueError(f"{where}: labels in y must be >= 0, got {y.min()}")
    if kind is None:
        if x.ndim == 4:
            kind = "image"
        elif x.ndim == 3:
            kind = "sequence" if (y is not None and y.ndim == 2) else "image"
        elif x.shape[1] == 2:
            kind = "points2d"
        elif np.isin(x, (0, 1)).all():
            kind = "binary"
        else:
            kind = "vector"
    is_uint8 = x.dtype == np.uint8
    x = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    if kind == "image":
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim != 4:
            raise ValueError(f"{where}: kind 'image' needs x of 3 or 4 dims, got shape {tuple(x.shape)}")
        elif x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        if is_uint8:
            x = x / 255
    elif kind == "sequence":
        if x.ndim != 3:
            raise ValueError(f"{where}: kind 'sequence' needs x (N, T, F), got shape {tuple(x.shape)}")
    elif kind == "points2d":
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"{where}: kind 'points2d' needs x (N, 2), got shape {tuple(x.shape)}")
    else:  # binary / vector: flat
        x = x.reshape(n, -1)
        if kind == "binary" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{where}: kind 'binary' needs x with values 0 and 1 only")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: x has NaN or infinite values")
    if y is None:
        yt = torch.zeros((n, x.shape[1]) if kind == "sequence" else (n,), dtype=torch.int64)
    else:
        yt = torch.from_numpy(np.ascontiguousarray(y)).to(torch.int64)
        if kind == "sequence" and tuple(yt.shape) != tuple(x.shape[:2]):
            raise ValueError(f"{where}: a sequence's y must be (N, T) = {tuple(x.shape[:2])}, got {tuple(yt.shape)}")
        if kind != "sequence" and yt.ndim != 1:
            raise ValueError(f"{where}: y must be (N,) for kind {kind!r}, got shape {tuple(yt.shape)}")
    num_classes = int(yt.max()) + 1 if yt.numel() else 1
    return {"x": x, "y": yt, "kind": kind, "num_classes": num_classes, "class_names": None}


def _check_npz(opts):
    check_float(opts, "test_fraction", 0.0, 1.0, "npz", hi_open=True)
    check_choice(opts, "kind", NPZ_KINDS, "npz")


register(DatasetBuilder(
    name="folder", kind="image", options={"path": _REQUIRED, "size": 32, "channels": 3, "test_fraction": 0.1},
    default_n=None, doc="your images: a folder of image files, or of class subfolders of them",
    load=load_folder, check=_check_folder,
    option_docs={"path": "the folder", "size": "side the images are resized to",
                 "channels": "1 (grey) or 3 (RGB)",
                 "test_fraction": "share held out as the test split (0: test = all items)"}))

register(DatasetBuilder(
    name="npz", kind=None, options={"path": _REQUIRED, "kind": None, "test_fraction": 0.1},
    default_n=None, doc="your arrays: an .npz file with x (N, ...) and optional integer labels y",
    load=load_npz, check=_check_npz,
    option_docs={"path": "the .npz file", "kind": "override the guessed kind",
                 "test_fraction": "share held out as the test split (0: test = all items)"}))
