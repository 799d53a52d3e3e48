"""What the photo-dataset readers (MPIIFaceGaze, ColumbiaGaze) share: batches of samples, and a reader's context."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gazegen import geometry
from gazegen.config import NormalisationConfig
from gazegen.data.masks import landmark_masks
from gazegen.data.sample import Sample


class PhotoSubjectReader:
    """A subject of photos normalised one at a time; ``sample(i)`` gives image i's Sample, or None to skip it."""

    chunk: int
    subject: str
    normalisation: NormalisationConfig

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample | None:
        raise NotImplementedError

    def batches(self, size: int | None = None) -> Iterator[list[Sample]]:
        size = size or self.chunk
        for start in range(0, len(self), size):
            samples = (self.sample(i) for i in range(start, min(len(self), start + size)))
            yield [s for s in samples if s is not None]

    def labelled_sample(self, face, gaze: np.ndarray, head_pose: np.ndarray, camera_matrix: np.ndarray,
                        index: int) -> Sample:
        """The Sample of a normalised face (gazegen.data.normalise) with its camera-frame gaze and head pose,
        and masks drawn from its landmarks."""
        masks = landmark_masks(face, camera_matrix)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return Sample(
            image=face.image, gaze=f32(gaze), head_pose=f32(head_pose),
            gaze_head=f32(geometry.gaze_camera_to_head(gaze, geometry.head_pose_to_rotation(head_pose))),
            camera=f32(geometry.head_pose_to_camera(head_pose, self.normalisation)), normalisation=self.normalisation,
            subject=self.subject, frame_index=index, cam_index=0, face_mask=masks.face_mask,
            left_eye_mask=masks.left_eye_mask, right_eye_mask=masks.right_eye_mask, face_mat_norm=f32(face.face_mat_norm),
        )

    def close(self) -> None:
        """Nothing held open: each photo is read when its sample is made."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
