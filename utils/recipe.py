"""The authors' recipe, in one place: every entry point takes its defaults from here.

train.py, evaluate.py and parse_images.py use these as their flags' defaults; run.sh and
run_evaluate.sh pass a flag only when its environment variable is set, so they inherit them;
the loader and bench/ read them too. docs/reference.md sections 6 and 7 say where each value
comes from. Where the authors' own files disagree, the value they trained and evaluated with
wins: their train.py parser says 473x473 crops, their run.sh, which produced the published
model, passes 384x384 (docs/differences.md).

The classes are not here: they are the label set's (utils/labels.py; the Dog set by default).
No imports: the shell scripts read this module without loading torch.
"""

from __future__ import annotations

DATA_DIR = "./dataset/Cartoon_sketches/Dog/"  # <split>_id.txt, <split>_images/, <split>_segmentations/
INPUT_SIZE = (384, 384)  # crop height, width (training and evaluation)
BATCH_SIZE = 12  # images per step (per process under torchrun)
LEARNING_RATE = 1e-3  # base LR of the poly schedule
MOMENTUM = 0.9  # SGD
WEIGHT_DECAY = 5e-4  # SGD, L2
POWER = 0.9  # poly exponent: lr = base * (1 - it / total) ** power
EPOCHS = 500  # the authors' run.sh
RANDOM_SEED = 1234  # the authors' train.py
SNAPSHOT_EVERY = 99  # DFPnet_epoch_<e>.pth when e % 99 == 0 (authors)
IMAGENET_WEIGHTS = "./Trained_Models/resnet101-imagenet.pth"  # the backbone's initialisation
SNAPSHOT_DIR = "./snapshots"
EVAL_SPLIT = "val"
EVAL_CHECKPOINT = "./snapshots/DFPnet_epoch_495.pth"  # the authors' released model
# Ours: where run.sh generates the synthetic demo set (data beside the Dog folder, not beside the code).
DEMO_DATA_DIR = "./dataset/Cartoon_sketches/Synthetic/"

# The training run's cadence. The authors' (their train.py, docs/reference.md section 6):
LOG_EVERY = 100  # TensorBoard loss / learning_rate every N iterations
IMAGE_EVERY = 500  # TensorBoard input / label / prediction grids
SAVE_NUM_IMAGES = 2  # images per grid (their --save-num-images)
EVAL_EVERY = 5  # val and trainTest evaluated every N epochs ...
EVAL_EVERY_LATE = 20  # ... and every N from epoch EVAL_LATE_FROM on
EVAL_LATE_FROM = 500
# Ours (the authors had no resume, no workers flag and no time budget):
SAVE_EVERY = 500  # last.pth every N iterations, besides each epoch end
WORKERS = 2  # DataLoader worker processes per process
TIMING_STEPS = 5  # steps --time-budget times; the first 2 are warm-up

# Augmentation of the training splits (their loader): scale 1 +- 0.25, rotation +- 30 degrees
# for 60 % of the samples, horizontal flip half of the time.
SCALE_FACTOR = 0.25
ROTATION_FACTOR = 30.0
ROTATION_PROB = 0.6
FLIP_PROB = 0.5


if __name__ == "__main__":  # `python -m utils.recipe NAME`: one value, for the shell scripts
    import sys

    value = globals()[sys.argv[1]]
    print(",".join(map(str, value)) if isinstance(value, tuple) else value)
