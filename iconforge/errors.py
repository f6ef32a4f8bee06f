"""Errors a user can act on, and the one way a stage reports them.

A StageError's message names the cause (the params key, the file and what is
wrong with it); `run_stage` prints it as one line prefixed with the stage name
and exits 1. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import logging
import sys
from typing import Callable

# What a write fails with when the disk (or quota, or the process's file size limit) is full.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

# torchao (train.quantize: int8) is imported by diffusers whenever it is installed, and on torch 2.14 it logs
# import-time warnings (its enums, torchao tensor types diffusers looks for) that concern nothing a stage does
# (no torchao-serialized checkpoint is loaded) and would precede a stage's one-line error.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class StageError(Exception):
    """A problem with params, inputs or the machine that the user can fix."""


class InputError(StageError, ValueError):
    """An input file is malformed or unusable; the message names it."""


class MissingInput(StageError, FileNotFoundError):
    """An input file is missing; the message names it and the stage that writes it."""


class DiskFull(StageError, OSError):
    """A write failed for lack of space; the message names the path and the space it needed."""


def run_stage(name: str, main: Callable[[], object]) -> None:
    try:
        main()
    except StageError as e:
        sys.exit(f"{name}: {e}")
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        # A write outside iconforge.atomic (a library's own file): the path, if the OS named one.
        sys.exit(f"{name}: {e.filename or 'a write'}: no space left ({e.strerror}); free space and rerun")
