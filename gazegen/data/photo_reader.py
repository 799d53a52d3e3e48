"""What the photo-dataset readers (MPIIFaceGaze, ColumbiaGaze) share: batches of samples, and a reader's context."""

from __future__ import annotations

from collections.abc import Iterator

from gazegen.data.sample import Sample


class PhotoSubjectReader:
    """A subject of photos normalised one at a time; ``sample(i)`` gives image i's Sample, or None to skip it."""

    chunk: int

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> Sample | None:
        raise NotImplementedError

    def batches(self, size: int | None = None) -> Iterator[list[Sample]]:
        size = size or self.chunk
        for start in range(0, len(self), size):
            samples = (self.sample(i) for i in range(start, min(len(self), start + size)))
            yield [s for s in samples if s is not None]

    def close(self) -> None:
        """Nothing held open: each photo is read when its sample is made."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
