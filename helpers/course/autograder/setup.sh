#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image; the zip is unpacked in
# /autograder/source. It installs torch's CPU build (the checks need no GPU) and then the grader.
set -euo pipefail
cd /autograder/source
python3 -m pip install --quiet --upgrade pip
python3 -m pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cpu
python3 -m pip install --quiet .
