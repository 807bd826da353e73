"""Install a trained prior folder as a built-in prior: ``builtin:NAME``.

    python -m lab.priors.install_prior DIR NAME

A training run (``lab.priors.train_prior --out DIR``, then ``train_classifier`` / ``train_view_head
--out DIR``) writes one folder. The files the recipes load at run time (``lab.RUN_TIME_ENTRIES``:
the diffusers components, ``model_index.json``, ``known_words.json``) replace those of
``threestudio_like/priors/weights/NAME``, which ships in the wheel; everything else (architecture,
training log and info, sample sheets, ``classifier/``) goes to ``lab/weights/NAME``, which does not.
An entry DIR lacks is left as it is (a retrained prior keeps its classifier); ``train_state.pt``
(an unfinished run's optimiser state) is never copied.
"""

from __future__ import annotations

import argparse
import os
import shutil
from typing import Optional

from lab import LAB_WEIGHTS_DIR, RUN_TIME_ENTRIES

SKIPPED = ("train_state.pt",)


def install_prior(folder: str, name: str, package_dir: Optional[str] = None, lab_dir: str = LAB_WEIGHTS_DIR) -> dict[str, list[str]]:
    """Copy ``folder``'s entries into the package's and the lab's halves of ``name``; returns what went where."""
    from threestudio_like.guidance.models import BUILTIN_WEIGHTS_DIR

    if not os.path.isfile(os.path.join(folder, "model_index.json")) or not os.path.isdir(os.path.join(folder, "unet")):
        raise FileNotFoundError(f"{folder} is not a trained prior folder (no model_index.json and unet/)")
    targets = {"package": os.path.join(package_dir or BUILTIN_WEIGHTS_DIR, name), "lab": os.path.join(lab_dir, name)}
    placed: dict[str, list[str]] = {"package": [], "lab": []}
    for entry in sorted(os.listdir(folder)):
        if entry in SKIPPED:
            continue
        side = "package" if entry in RUN_TIME_ENTRIES else "lab"
        source, target = os.path.join(folder, entry), os.path.join(targets[side], entry)
        os.makedirs(targets[side], exist_ok=True)
        if os.path.isdir(target):
            shutil.rmtree(target)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        placed[side].append(entry)
    return placed


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a trained prior folder (train_prior --out DIR)")
    parser.add_argument("name", help="the built-in name: shapes32, shapes32-mv, edit32, or a new one")
    args = parser.parse_args(argv)
    placed = install_prior(args.folder, args.name)
    print(f"package (builtin:{args.name}): {', '.join(placed['package'])}")
    print(f"lab/weights/{args.name}: {', '.join(placed['lab']) or '(nothing)'}")


if __name__ == "__main__":
    main()
