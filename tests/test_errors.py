"""The one-line views of an error's message that the CLI and the logs print."""

from gazegen.errors import first_line, last_line

RAY_INIT_FAILURE = ("The actor died because of an error raised in its creation task, ray::A.__init__() (pid=1)\n"
                    "           ^^^^^^^^\n  File \"x.py\", line 6, in __init__\n"
                    "RuntimeError: CUDA error: no CUDA-capable device is detected\n\n")


def test_first_and_last_non_blank_lines():
    error = RuntimeError(RAY_INIT_FAILURE)
    assert first_line(error).startswith("The actor died because of an error raised in its creation task")
    assert last_line(error) == "RuntimeError: CUDA error: no CUDA-capable device is detected"


def test_an_empty_or_blank_message_gives_an_empty_line():
    for error in (RuntimeError(), RuntimeError("  \n\n ")):
        assert first_line(error) == "" and last_line(error) == ""
