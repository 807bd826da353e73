"""The research lab around threestudio_like: measures, comparisons, and the code that trains the
built-in priors and their classifiers. Not installed (the wheel holds ``threestudio_like`` only);
run it from a checkout, e.g. ``python -m lab.evaluation --help``. See lab/README.md.

The lab imports the package; the package never imports the lab.

A built-in prior is split in two: the files the recipes load at run time (``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``, ``known_words.json``)
ship in ``threestudio_like/priors/weights/<name>``; what only the lab reads (its
``architecture.json``, training log and info, sample sheets, and the evaluator's classifier and
view heads under ``classifier/``) lives in ``lab/weights/<name>``. ``lab_side`` maps the first
folder to the second; a freshly trained prior folder keeps both halves together.
"""

from __future__ import annotations

import os

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
LAB_WEIGHTS_DIR = os.path.join(LAB_DIR, "weights")

# What the recipes read from a built-in prior (guidance/models.py and the prompt processor);
# everything else a training run writes is the lab's.
RUN_TIME_ENTRIES = ("unet", "text_encoder", "tokenizer", "scheduler", "vae", "model_index.json", "known_words.json")


def lab_side(folder: str) -> str:
    """The folder holding a prior's lab files: ``lab/weights/<name>`` for a built-in prior's
    folder (``threestudio_like/priors/weights/<name>``, or ``builtin:<name>``), else ``folder``."""
    from threestudio_like.guidance.models import BUILTIN_PREFIX, BUILTIN_WEIGHTS_DIR

    if folder.startswith(BUILTIN_PREFIX):
        return os.path.join(LAB_WEIGHTS_DIR, folder[len(BUILTIN_PREFIX):])
    path = os.path.abspath(folder)
    if os.path.dirname(path.rstrip(os.sep)) == os.path.abspath(BUILTIN_WEIGHTS_DIR):
        return os.path.join(LAB_WEIGHTS_DIR, os.path.basename(path.rstrip(os.sep)))
    return folder
